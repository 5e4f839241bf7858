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

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from .. import threads
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
    leaves nothing behind: not one aborted (ABORT, DISCONNECT), nor one
    whose EOM is cancelled while the flush runs (a hook timeout, the
    shutdown deadline), which is then removed instead of moved.

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
        self._commit: _Commit | None = None
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
        newPath = os.path.join(self.path, "new", os.path.basename(tmpPath))
        reply = super().EOM()
        if not self.fsync:
            try:
                file.close()
                os.rename(tmpPath, newPath)
            except BaseException:
                file.close()
                _unlink(tmpPath)
                raise
            return reply
        commit = self._commit = _Commit(file, tmpPath, newPath)
        return commit.start(reply)

    def ABORT(self) -> HookResult:
        return self._discard()

    def DISCONNECT(self) -> HookResult:
        return self._discard()

    def _discard(self) -> Deferred[None] | None:
        if self._file is not None:
            self._file.close()
            self._file = None
            _unlink(self._tmpPath)
            self._tmpPath = ""
        commit, self._commit = self._commit, None
        if commit is not None and not commit.finished:
            # An EOM whose answer was not taken (cancelled): wait until its
            # flush is over and the file is gone.
            return commit.wait()
        return None


class _Commit:
    """
    Delivers one message: the flush to stable storage runs in a thread,
    then, back in the reactor thread, the file is moved into C{new/} and
    the EOM's Deferred fires with its reply -- unless that Deferred was
    cancelled meanwhile (a hook timeout, the shutdown deadline), in which
    case the file is removed instead: a message is in C{new/} only if its
    acknowledgement could still go out.
    """

    def __init__(self, file: IO[bytes], tmpPath: str, newPath: str) -> None:
        self._file = file
        self._tmpPath = tmpPath
        self._newPath = newPath
        self._cancelled = False
        self.finished = False
        self._waiting: list[Deferred[None]] = []

    def start(self, reply: HookResult) -> Deferred[HookResult]:
        result: Deferred[HookResult] = Deferred(self._cancel)
        synced = threads.deferToThread(self._sync)
        synced.addBoth(self._synced, result, reply)
        return result

    def _cancel(self, result: Deferred[HookResult]) -> None:
        # The canceller: the file is dealt with once the thread is done
        # with it; the Deferred fails with CancelledError meanwhile.
        self._cancelled = True

    def _sync(self) -> None:
        # In a thread; the reactor thread does not touch the file until
        # this is over.
        file = self._file
        file.flush()
        os.fsync(file.fileno())

    def _synced(
        self, outcome: object, result: Deferred[HookResult], reply: HookResult
    ) -> None:
        failure: Failure | None = outcome if isinstance(outcome, Failure) else None
        try:
            self._file.close()
            if failure is None and not self._cancelled:
                os.rename(self._tmpPath, self._newPath)
        except BaseException:
            failure = Failure()
        if failure is not None or self._cancelled:
            _unlink(self._tmpPath)
        self.finished = True
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            deferred.callback(None)
        if self._cancelled:
            return  # the result failed with CancelledError already
        if failure is not None:
            result.errback(failure)
        else:
            result.callback(reply)

    def wait(self) -> Deferred[None]:
        """
        A Deferred that fires when the message is in C{new/} or removed.
        """
        if self.finished:
            return succeed(None)
        deferred: Deferred[None] = Deferred()
        self._waiting.append(deferred)
        return deferred


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
