"""
L{Maildir}: deliver every message into a Maildir folder.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Mapping
from typing import IO, Any

from twisted.internet import threads
from twisted.python.usage import UsageError

from ..handler import ESMTPHandler
from ..received import receivedHeader
from ..reply import HookResult

__all__ = ["Maildir"]

_counter = itertools.count()


def _uniqueName() -> str:
    # The Maildir naming scheme: time, microseconds, pid, a counter and
    # randomness, then the host name with "/" and ":" escaped.
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return (
        f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}"
        f"R{os.urandom(4).hex()}.{host}"
    )


class Maildir(ESMTPHandler):
    """
    Writes each message, after a C{Received:} header, into C{tmp/} of a
    Maildir as it streams in, and on EOM flushes it to disk and moves it
    into C{new/} before answering 250. A message that does not complete
    leaves nothing behind.

    One message per transaction, whatever the number of recipients: this is
    a catch-all mailbox.
    """

    _prepared: set[str] = set()

    def __init__(self, path: str = "Maildir", fsync: bool = True) -> None:
        """
        @param path: the Maildir folder; it and its C{tmp}, C{new} and
            C{cur} sub-folders are created if missing.
        @param fsync: flush each message to stable storage before accepting
            it (in a thread, so the server goes on serving meanwhile).
        """
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self._file: IO[bytes] | None = None
        self._tmpPath = ""
        if self.path not in self._prepared:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(self.path, sub), exist_ok=True)
            self._prepared.add(self.path)

    @classmethod
    def fromOptions(cls, options: Mapping[str, Any]) -> Any:
        """
        The handler factory for C{twistd esmtpkit}: C{--maildir} names the
        folder.
        """
        path = options.get("maildir") or "Maildir"
        try:
            cls(path)  # create the folders now, so a bad path fails at start-up
        except OSError as e:
            raise UsageError(f"--maildir {path}: {e.strerror}") from None
        return lambda: cls(path)

    def DATA(self) -> HookResult:
        transaction = self.session.transaction
        assert transaction is not None
        name = _uniqueName()
        self._tmpPath = os.path.join(self.path, "tmp", name)
        self._file = open(self._tmpPath, "xb")
        self._file.write(receivedHeader(self.session, transaction))
        return super().DATA()

    def EOH(self) -> None:
        transaction = self.session.transaction
        assert self._file is not None and transaction is not None
        self._file.write(transaction.rawHeaders)

    def BODY(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)

    def EOM(self) -> HookResult:
        assert self._file is not None
        file, tmpPath = self._file, self._tmpPath
        self._file = None
        self._tmpPath = ""
        name = os.path.basename(tmpPath)
        reply = super().EOM()

        def commit() -> HookResult:
            try:
                file.flush()
                if self.fsync:
                    os.fsync(file.fileno())
                file.close()
                os.rename(tmpPath, os.path.join(self.path, "new", name))
            except BaseException:
                file.close()
                _unlink(tmpPath)
                raise
            return reply

        if self.fsync:
            return threads.deferToThread(commit)
        return commit()

    def ABORT(self) -> None:
        self._discard()

    def DISCONNECT(self) -> None:
        self._discard()

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            _unlink(self._tmpPath)
            self._tmpPath = ""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
