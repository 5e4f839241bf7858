"""
Start-up errors that stop C{twistd esmtpkit} with one line, and finding the
object a C{--handler} name names.

A L{twisted.python.usage.UsageError} makes C{twistd} print its whole usage
text (about a hundred lines) before the message, which buries it; a problem
that is not about how the options are spelt (a handler that cannot be
imported, a port that cannot be listened on) is a L{StartupError} instead:
a L{SystemExit} whose message Python prints alone on standard error, with
exit status 1.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

__all__ = ["StartupError", "resolveName"]


class StartupError(SystemExit):
    """
    Stop start-up with one line, C{esmtpkit: MESSAGE}, on standard error,
    and exit status 1.

    @ivar message: the line without the C{esmtpkit: } prefix.
    """

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())  # one line, whatever it held
        super().__init__(f"esmtpkit: {self.message}")


def _currentDirectoryOnPath() -> bool:
    here = os.path.realpath(os.getcwd())
    for entry in sys.path:
        try:
            if os.path.realpath(entry or os.curdir) == here:
                return True
        except (OSError, ValueError):
            continue
    return False


def _where(error: BaseException) -> str:
    # The innermost frame outside the import machinery, below the frame
    # that asked for the import (none for a SyntaxError, which names its
    # place itself).
    frames = traceback.extract_tb(error.__traceback__)[1:]
    for frame in reversed(frames):
        if "importlib" not in frame.filename and "<frozen" not in frame.filename:
            return f" (at {frame.filename}:{frame.lineno})"
    return ""


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def resolveName(name: str, option: str = "--handler") -> Any:
    """
    The object C{name} (C{package.module.Name}) names.

    @raise StartupError: C{name} is not a dotted name; its module is not
        found (naming the module, and, when the current directory is not on
        the module path, as under C{twistd}, saying so); importing the
        module raised (showing that exception and where); or the module has
        no such attribute.
    """
    parts = name.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise StartupError(
            f"{option} {name}: not a dotted name of the form module.Name"
        )
    missing: str | None = None
    module: Any = None
    found = 0
    for count in range(len(parts) - 1, 0, -1):
        moduleName = ".".join(parts[:count])
        try:
            module = importlib.import_module(moduleName)
        except ModuleNotFoundError as e:
            if e.name is not None and (
                moduleName == e.name or moduleName.startswith(e.name + ".")
            ):
                # This module (or a package above it) does not exist: the
                # name may be module.Class.attribute; try a shorter module.
                if missing is None:
                    missing = e.name
                continue
            raise StartupError(
                f"{option} {name}: importing {moduleName} failed: "
                f"{_describe(e)}{_where(e)}"
            ) from None
        except Exception as e:
            raise StartupError(
                f"{option} {name}: importing {moduleName} failed: "
                f"{_describe(e)}{_where(e)}"
            ) from None
        found = count
        break
    if module is None:
        assert missing is not None
        hint = ""
        if not _currentDirectoryOnPath():
            hint = (
                " (twistd does not look in the current directory: "
                "set PYTHONPATH=. if the module is there)"
            )
        raise StartupError(f"{option} {name}: no module named {missing!r}{hint}")
    value = module
    for index in range(found, len(parts)):
        try:
            value = getattr(value, parts[index])
        except AttributeError:
            owner = ".".join(parts[:index])
            if missing is not None and index == found:
                raise StartupError(
                    f"{option} {name}: no module named {missing!r}"
                ) from None
            raise StartupError(
                f"{option} {name}: {owner} has no attribute {parts[index]!r}"
            ) from None
    return value
