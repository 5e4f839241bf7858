"""
Handlers with declared options, for tests/test_handleroptions.py (importable
by a twistd subprocess with PYTHONPATH set to the checkout).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.python import usage

from esmtpkit import ESMTPHandler
from esmtpkit.handlers.options import HandlerOptions, positiveInt


class ArchiveOptions(HandlerOptions):
    optParameters = [
        ["folder", None, "archive", "Where to keep messages."],
        ["max-age", None, 30, "Days to keep them.", positiveInt],
    ]
    optFlags = [["compress", None, "Compress each message."]]


class Archive(ESMTPHandler):
    """
    Keeps its options; answers EOM with them.
    """

    Options = ArchiveOptions

    def __init__(
        self, folder: str = "archive", maxAge: int = 30, compress: bool = False
    ) -> None:
        super().__init__()
        self.folder = folder
        self.maxAge = maxAge
        self.compress = compress

    def EOM(self) -> Any:
        return (250, f"2.0.0 {self.folder} {self.maxAge} {self.compress}")


class CheckedOptions(HandlerOptions):
    optParameters = [["spool", None, None, "A folder that must exist."]]

    def postOptions(self) -> None:
        if self["spool"] is None:
            raise usage.UsageError("spool=... is required")


class Checked(ESMTPHandler):
    """
    Builds its factory once, checking the folder exists.
    """

    Options = CheckedOptions
    built = 0

    def __init__(self, spool: str) -> None:
        super().__init__()
        self.spool = spool

    @classmethod
    def fromHandlerOptions(cls, options: CheckedOptions) -> Any:
        if not os.path.isdir(options["spool"]):
            raise ValueError(f"spool {options['spool']} is not a folder")
        cls.built += 1
        spool = options["spool"]
        return lambda: cls(spool)


class Filter(ESMTPHandler):
    """
    A refusing filter with one option, for chains.
    """

    class Options(HandlerOptions):
        optParameters = [["word", None, "spam", "Refuse subjects with it."]]

    def __init__(self, word: str = "spam") -> None:
        super().__init__()
        self.word = word

    def HEADER(self, name: str, value: str) -> None:
        if name.lower() == "subject" and self.word in value:
            self.session.data["refuse"] = True

    def EOM(self) -> Any:
        if self.session.data.get("refuse"):
            return (550, f"5.7.1 No {self.word}")
        return None


class BadSignature(ESMTPHandler):
    """
    Declares an option its constructor does not take.
    """

    class Options(HandlerOptions):
        optParameters = [["colour", None, "red", "A colour."]]
