"""
The file work of the L{Maildir <esmtpkit.handlers.Maildir>} handler: the
files one message becomes (made in C{tmp/}, flushed, moved into C{new/} all
together or not at all), the directory flush batched across messages, and
the commit that ties them to the EOM's answer.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import ClassVar

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import threads
from ..core.rewrite import ModifiedMessage, bodyChunks
from ..reply import HookResult, Reply

__all__ = ["STORAGE_FAILED", "DirectorySync", "MessageFiles", "Commit"]

log = Logger(namespace="esmtpkit")

STORAGE_FAILED = Reply(452, "Insufficient system storage", enhanced="4.3.1")
"""The reply to a message that could not be stored: a full disk, a folder
that cannot be written. The client keeps the message and tries later."""

_COPY = 1 << 20


def createFile(path: str) -> int:
    """
    Create file C{path} (it must not exist) to write and read; return its
    descriptor.
    """
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)


def writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to C{fd} (C{os.write} may write less).
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copyFrom(source: int, target: int, offset: int) -> None:
    """
    Append to C{target} the bytes of file C{source} from C{offset} to its
    end, in the kernel when it can (C{sendfile}), else through a buffer.
    """
    while True:
        try:
            sent = os.sendfile(target, source, offset, _COPY)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            break
        if not sent:
            return
        offset += sent
    while data := os.pread(source, _COPY, offset):
        writeAll(target, data)
        offset += len(data)


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def unlink(path: str) -> None:
    """
    Remove C{path} if it is there.
    """
    try:
        os.unlink(path)
    except OSError:
        pass


class MessageFiles:
    """
    The files one message becomes: the spool the message streamed into
    (an optional prefix of delivery headers, the C{Received:} header, the
    header section received, the body), and one copy per prefix made from
    it at the end.

    @ivar paths: the files made in C{tmp/} so far, the spool's first.
    @ivar moved: the files moved into C{new/} so far.
    """

    def __init__(
        self, spool: int, spoolPath: str, prefix: bytes, headerOffset: int
    ) -> None:
        """
        @param spool: the descriptor of the spool file, open for writing.
        @param spoolPath: its path in C{tmp/}.
        @param prefix: the delivery headers it starts with.
        @param headerOffset: where the header section received starts in it
            (after the C{Received:} header).
        """
        self.spool: int | None = spool
        self.paths = [spoolPath]
        self.moved: list[str] = []
        self.prefix = prefix
        self.prefixSize = len(prefix)
        self.headerOffset = headerOffset
        self.bodyOffset = -1
        self._fds: list[int] = []
        self._delivered: list[str] = []

    def build(
        self,
        prefixes: Sequence[bytes],
        message: ModifiedMessage,
        newName: Callable[[], str],
        fsync: bool,
    ) -> None:
        """
        Make one file per prefix: the prefix, then the C{Received:} header
        and the message as modified. The spool is the first file when its
        prefix and content need no change; otherwise it is rewritten into a
        new file and removed. Every file is flushed to disk when C{fsync}.
        All or nothing: on any error every file made is removed.

        Only file work, no reactor: called in a thread when C{fsync}.

        @param newName: makes the path in C{tmp/} of a new file.
        """
        assert self.spool is not None
        spool, spoolPath = self.spool, self.paths[0]
        try:
            reuse = not message.contentChanged and prefixes[0] == self.prefix
            if reuse:
                first, commonStart = spool, self.prefixSize
                self._delivered = [spoolPath]
            else:
                first = self._create(newName())
                writeAll(first, prefixes[0])
                commonStart = len(prefixes[0])
                self._rewrite(spool, first, message)
            for prefix in prefixes[1:]:
                copy = self._create(newName())
                writeAll(copy, prefix)
                copyFrom(first, copy, commonStart)
            if fsync:
                for fd in [first, *self._fds[1 if not reuse else 0 :]]:
                    os.fsync(fd)
        except BaseException:
            self.closeAll()
            self.remove()
            raise
        self.closeAll()
        if not reuse:
            unlink(spoolPath)
            self.paths.remove(spoolPath)

    def _create(self, path: str) -> int:
        fd = createFile(path)
        self._fds.append(fd)
        self.paths.append(path)
        self._delivered.append(path)
        return fd

    def _rewrite(self, spool: int, target: int, message: ModifiedMessage) -> None:
        # The Received: header as written at DATA, then the message as the
        # modifications make it; the body copied from the spool or replaced.
        received = os.pread(spool, self.headerOffset - self.prefixSize, self.prefixSize)
        writeAll(target, received)
        if not message.contentChanged:
            copyFrom(spool, target, self.headerOffset)
            return
        writeAll(target, message.headerSection)
        if message.replacement is None:
            copyFrom(spool, target, self.bodyOffset)
        else:
            for chunk in bodyChunks(message.replacement):
                writeAll(target, chunk)

    def closeAll(self) -> None:
        """
        Close the spool and every copy.
        """
        _close(self.spool)
        self.spool = None
        for fd in self._fds:
            _close(fd)
        self._fds = []

    def move(self, newDir: str) -> None:
        """
        Move every file made into C{newDir}, all or none: if one move fails,
        those done are undone (removed) and the error raised.
        """
        for path in self._delivered:
            target = os.path.join(newDir, os.path.basename(path))
            os.rename(path, target)
            self.moved.append(target)
            self.paths.remove(path)

    def remove(self) -> None:
        """
        Remove every file made, in C{tmp/} or moved.
        """
        for path in self.paths + self.moved:
            unlink(path)
        self.paths = []
        self.moved = []


class DirectorySync:
    """
    Flushes a directory to disk for every caller, batched: one flush (in a
    thread) covers every caller that asked before it started, and callers
    that ask while one runs share the next one. So the renames of many
    messages committed in the same moment cost one directory flush, not one
    each.
    """

    _all: ClassVar[dict[str, DirectorySync]] = {}

    def __init__(
        self,
        path: str,
        inThread: Callable[..., Deferred[None]] = threads.deferToThread,
    ) -> None:
        self.path = path
        self._inThread = inThread
        self._running = False
        self._waiting: list[Deferred[None]] = []
        self.flushes = 0

    @classmethod
    def forPath(cls, path: str) -> DirectorySync:
        """
        The one L{DirectorySync} of directory C{path} in this process.
        """
        sync = cls._all.get(path)
        if sync is None:
            sync = cls._all[path] = cls(path)
        return sync

    def sync(self) -> Deferred[None]:
        """
        A Deferred that fires once a flush of the directory that started
        after this call has succeeded (or fails with its error).
        """
        deferred: Deferred[None] = Deferred()
        self._waiting.append(deferred)
        if not self._running:
            self._start()
        return deferred

    def _start(self) -> None:
        waiting, self._waiting = self._waiting, []
        self._running = True
        self.flushes += 1
        self._inThread(fsyncDirectory, self.path).addBoth(self._done, waiting)

    def _done(self, outcome: object, waiting: list[Deferred[None]]) -> None:
        self._running = False
        for deferred in waiting:
            if isinstance(outcome, Failure):
                deferred.errback(outcome)
            else:
                deferred.callback(None)
        if self._waiting:
            self._start()


def fsyncDirectory(path: str) -> None:
    """
    Flush directory C{path} (its entries: the names renamed into it) to disk.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Commit:
    """
    Delivers one message durably: its files are made and flushed in a
    thread; back in the reactor thread they are moved into C{new/}, the
    directory is flushed (batched, L{DirectorySync}), and the EOM's
    Deferred fires with its reply -- unless it was cancelled meanwhile (a
    hook timeout, the shutdown deadline), in which case the files are
    removed instead: a message stays in C{new/} only if its acknowledgement
    could still go out. A storage error removes every file and answers
    L{STORAGE_FAILED}.
    """

    def __init__(
        self,
        files: MessageFiles,
        build: Callable[[], None],
        newDir: str,
        describe: str,
    ) -> None:
        """
        @param build: makes and flushes the files (run in a thread).
        @param newDir: where the files go.
        @param describe: names the message in a log line.
        """
        self._files = files
        self._build = build
        self._newDir = newDir
        self._describe = describe
        self._cancelled = False
        self._result: Deferred[HookResult] | None = None
        self._reply: HookResult = None
        self.finished = False
        self._waiting: list[Deferred[None]] = []

    def start(self, reply: HookResult) -> Deferred[HookResult]:
        """
        Begin; the result fires with C{reply} once the message is durably
        in C{new/}, with L{STORAGE_FAILED} if it could not be stored.
        """
        self._reply = reply
        result: Deferred[HookResult] = Deferred(self._cancel)
        self._result = result
        threads.deferToThread(self._build).addBoth(self._built)
        return result

    def _cancel(self, result: Deferred[HookResult]) -> None:
        # The canceller: the files are dealt with once the work in flight is
        # over; the Deferred fails with CancelledError meanwhile.
        self._cancelled = True

    def _built(self, outcome: object) -> None:
        if isinstance(outcome, Failure):
            self._end(outcome)
            return
        if self._cancelled:
            self._end(None)
            return
        try:
            self._files.move(self._newDir)
        except OSError:
            self._end(Failure())
            return
        DirectorySync.forPath(self._newDir).sync().addBoth(self._synced)

    def _synced(self, outcome: object) -> None:
        self._end(outcome if isinstance(outcome, Failure) else None)

    def _end(self, failure: Failure | None) -> None:
        if failure is not None or self._cancelled:
            self._files.closeAll()
            self._files.remove()
        self.finished = True
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            deferred.callback(None)
        if self._cancelled:
            return  # the result failed with CancelledError already
        assert self._result is not None
        if failure is None:
            self._result.callback(self._reply)
        elif failure.check(OSError):
            logStorageError(self._describe, failure.value)
            self._result.callback(STORAGE_FAILED)
        else:
            self._result.errback(failure)

    def wait(self) -> Deferred[None]:
        """
        A Deferred that fires when the message is delivered or removed.
        """
        if self.finished:
            return succeed(None)
        deferred: Deferred[None] = Deferred()
        self._waiting.append(deferred)
        return deferred


def logStorageError(describe: str, error: BaseException) -> None:
    """
    Log that C{describe} could not be stored because of C{error}.
    """
    log.warn(
        "Maildir: cannot store {message}: {error}; answered 452 4.3.1",
        message=describe,
        error=error,
    )
