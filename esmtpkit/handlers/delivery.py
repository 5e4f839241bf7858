"""
The file work of the L{Maildir <esmtpkit.handlers.Maildir>} handler: the
files one message becomes (streamed into memory or C{tmp/}, made, flushed,
moved into C{new/} all together or not at all), the room check at DATA and
the directory flush. L{esmtpkit.handlers.commit} runs that work in batches.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence

from twisted.logger import Logger

from ..core.rewrite import ModifiedMessage, bodyChunks
from ..reply import Reply

__all__ = [
    "STORAGE_FAILED",
    "SPOOL_MEMORY",
    "MessageFiles",
    "checkRoom",
    "fsyncDirectory",
    "logStorageError",
]

log = Logger(namespace="esmtpkit")

STORAGE_FAILED = Reply(452, "Insufficient system storage", enhanced="4.3.1")
"""The reply to a message that could not be stored: a full disk, a folder
that cannot be written. The client keeps the message and tries later."""

_COPY = 1 << 20

SPOOL_MEMORY = 64 * 1024
"""How much of a message L{MessageFiles} keeps in memory before it goes
on in a file in C{tmp/}: a message no bigger is written whole, in the
committer's thread, at its end."""


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
    it at the end. The spool is in memory up to L{SPOOL_MEMORY} bytes and
    in a file in C{tmp/} past that; at the end it is a file either way.

    @ivar paths: the files made in C{tmp/} so far, the spool's first.
    @ivar moved: the files moved into C{new/} so far.
    """

    def __init__(
        self,
        spoolPath: str,
        prefix: bytes,
        headerOffset: int,
        memory: int | None = None,
    ) -> None:
        """
        @param spoolPath: the path in C{tmp/} of the spool file, made once
            the spool outgrows C{memory} bytes (or at the end).
        @param prefix: the delivery headers it starts with.
        @param headerOffset: where the header section received starts in it
            (after the C{Received:} header).
        @param memory: what the spool keeps in memory (L{SPOOL_MEMORY} by
            default).
        """
        self.spool: int | None = None
        self._buffer: bytearray | None = bytearray()
        self._memory = SPOOL_MEMORY if memory is None else memory
        self.paths = [spoolPath]
        self.moved: list[str] = []
        self.prefix = prefix
        self.prefixSize = len(prefix)
        self.headerOffset = headerOffset
        self.bodyOffset = -1
        self._fds: list[int] = []
        self._delivered: list[str] = []

    def write(self, data: bytes) -> None:
        """
        Append C{data} to the spool.
        """
        buffer = self._buffer
        if buffer is not None:
            if len(buffer) + len(data) <= self._memory:
                buffer += data
                return
            self._spoolFile()
        assert self.spool is not None
        writeAll(self.spool, data)

    def _spoolFile(self) -> int:
        # The spool as a file: made now, with what memory held, if need be.
        if self._buffer is not None:
            fd = createFile(self.paths[0])
            self.spool = fd
            buffer, self._buffer = self._buffer, None
            writeAll(fd, buffer)
        assert self.spool is not None
        return self.spool

    def build(
        self,
        prefixes: Sequence[bytes],
        message: ModifiedMessage,
        newName: Callable[[], str],
    ) -> None:
        """
        Make one file per prefix: the prefix, then the C{Received:} header
        and the message as modified. The spool is the first file when its
        prefix and content need no change; otherwise it is rewritten into a
        new file and removed. The files stay open (L{flush}, then
        L{closeAll}). All or nothing: on any error every file made is
        removed.

        Only file work, no reactor: called in a thread when the message is
        committed durably.

        @param newName: makes the path in C{tmp/} of a new file.
        """
        spoolPath = self.paths[0]
        try:
            spool = self._spoolFile()
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
        except BaseException:
            self.closeAll()
            self.remove()
            raise
        if not reuse:
            _close(spool)
            self.spool = None
            unlink(spoolPath)
            self.paths.remove(spoolPath)

    def startWriting(self) -> None:
        """
        Start writing the files made to disk, without waiting (so that the
        flushes of many messages overlap).
        """
        for fd in self._open():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def flush(self) -> None:
        """
        Flush every file made to stable storage, and close them.
        """
        for fd in self._open():
            os.fsync(fd)
        self.closeAll()

    def _open(self) -> list[int]:
        return ([] if self.spool is None else [self.spool]) + self._fds

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
        self._buffer = None
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


_room: dict[str, tuple[int, int]] = {}


def checkRoom(folder: str, size: int) -> None:
    """
    Raise the L{OSError} that making a file of C{size} bytes in C{folder}
    would meet, as far as can be known without making it: a folder that
    cannot be written (C{EACCES}), a file system without C{size} bytes or
    without an inode free (C{ENOSPC}). A folder found fit is taken as fit
    for the rest of that second, within the room it had (the writes tell
    of a disk that filled since).
    """
    second = int(time.monotonic())
    known = _room.get(folder)
    if known is not None and known[0] == second and size <= known[1]:
        return
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), folder)
    found = os.statvfs(folder)
    available = found.f_bavail * found.f_frsize
    # f_files is 0 where inodes are not counted (btrfs, some tmpfs).
    if available < size or (found.f_files and not found.f_favail):
        _room.pop(folder, None)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), folder)
    if len(_room) > 64:
        _room.clear()
    _room[folder] = (second, available)


def fsyncDirectory(path: str) -> None:
    """
    Flush directory C{path} (its entries: the names renamed into it) to disk.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def logStorageError(describe: str, error: BaseException) -> None:
    """
    Log that C{describe} could not be stored because of C{error}.
    """
    log.warn(
        "Maildir: cannot store {message}: {error}; answered 452 4.3.1",
        message=describe,
        error=error,
    )
