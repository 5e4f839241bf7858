"""
The durable commit of the L{Maildir <esmtpkit.handlers.Maildir>} handler:
each message's L{Commit}, run in batches by a L{Committer} (a group
commit), the file work of a batch in one thread (L{commitBatch}).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from .. import threads
from ..reply import HookResult
from .delivery import STORAGE_FAILED, MessageFiles, fsyncDirectory, logStorageError

__all__ = ["Commit", "Committer", "commitBatch"]


class Commit:
    """
    One message's durable delivery, done by a L{Committer} with the others
    of its batch: its files made and flushed, moved into C{new/}, the
    directory flushed; then the EOM's Deferred fires with its reply --
    unless it was cancelled meanwhile (a hook timeout, the shutdown
    deadline), in which case the files are removed instead: a message stays
    in C{new/} only if its acknowledgement could still go out. A storage
    error removes every file and answers L{STORAGE_FAILED}.
    """

    def __init__(
        self,
        files: MessageFiles,
        build: Callable[[], None],
        newDir: str,
        describe: str,
    ) -> None:
        """
        @param build: makes the files (run in a thread, L{MessageFiles.build}).
        @param newDir: where the files go.
        @param describe: names the message in a log line.
        """
        self.files = files
        self.build = build
        self.newDir = newDir
        self._describe = describe
        self.cancelled = False
        self.error: BaseException | None = None
        self._result: Deferred[HookResult] | None = None
        self._reply: HookResult = None
        self.finished = False
        self._waiting: list[Deferred[None]] = []

    def start(
        self, reply: HookResult, committer: Committer | None = None
    ) -> Deferred[HookResult]:
        """
        Begin; the result fires with C{reply} once the message is durably
        in C{new/}, with L{STORAGE_FAILED} if it could not be stored.

        @param committer: the one to join (L{Committer.current} by default).
        """
        self._reply = reply
        result: Deferred[HookResult] = Deferred(self._cancel)
        self._result = result
        (committer or Committer.current()).add(self)
        return result

    def _cancel(self, result: Deferred[HookResult]) -> None:
        # The canceller: the files are dealt with once the work in flight is
        # over; the Deferred fails with CancelledError meanwhile.
        self.cancelled = True

    def end(self, failure: Failure | None) -> None:
        """
        The batch is over (C{failure}: it could not be run): answer.
        """
        if failure is None and self.error is not None:
            failure = Failure(self.error)
        if failure is not None or self.cancelled:
            self.files.closeAll()
            self.files.remove()
        self.finished = True
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            deferred.callback(None)
        if self.cancelled:
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


def commitBatch(commits: Sequence[Commit]) -> None:
    """
    The file work of a batch of commits, in one thread: every message's
    files made, then all written out at once and flushed, then moved into
    C{new/}, then each C{new/} directory flushed once for all. A commit
    that fails keeps its error in L{Commit.error} (its files are removed
    later, in the reactor thread); the others go on.
    """
    built = []
    for commit in commits:
        if commit.cancelled:
            continue
        try:
            commit.build()
        except Exception as e:
            commit.error = e
        else:
            built.append(commit)
    if len(built) > 1:  # one message alone: its flush writes it anyway
        for commit in built:
            try:
                commit.files.startWriting()
            except OSError:
                pass  # the flush below tells
    moved = []
    for commit in built:
        try:
            commit.files.flush()
            if not commit.cancelled:
                commit.files.move(commit.newDir)
                moved.append(commit)
        except Exception as e:
            commit.error = e
    for newDir in dict.fromkeys(commit.newDir for commit in moved):
        try:
            fsyncDirectory(newDir)
        except OSError as e:
            for commit in moved:
                if commit.newDir == newDir:
                    commit.error = e


class Committer:
    """
    Commits messages durably, many at a time (a group commit): the first
    message of a quiet moment starts a batch at once; the messages whose
    EOM comes while a batch runs make up the next one, which starts when a
    running one ends, or at once when it has L{fullBatch} messages and
    fewer than L{atOnce} batches run. A batch is one piece of
    work in a thread (L{commitBatch}), so the flushes of its messages
    overlap, and its renames into a C{new/} cost one flush of that
    directory, not one each.

    @ivar batches: the batches run so far.
    """

    atOnce = 2
    """How many batches may run at once: another one overlaps its file
    work with the flushes the first is waiting for..."""

    fullBatch = 8
    """... when it has at least this many messages (with fewer, they wait
    for a running batch to end: each batch costs a flush of C{new/})."""

    _byRunner: ClassVar[weakref.WeakKeyDictionary[Any, Committer]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, runner: threads.ThreadRunner) -> None:
        """
        @param runner: runs each batch (a L{threads.ThreadRunner}).
        """
        # Held weakly: the committers of current() are values of a dict
        # whose weak keys are their runners (a live server's runner, and
        # its reactor, must not be kept alive by its committer).
        self._runner = weakref.ref(runner)
        self._pending: list[Commit] = []
        self._running = 0
        self.batches = 0

    @classmethod
    def current(cls) -> Committer:
        """
        The committer of the L{threads.ThreadRunner} in use in the calling
        thread (one per runner: a server on a reactor of its own, or a test
        connection running threads inline, has its own).
        """
        runner = threads.currentRunner()
        committer = cls._byRunner.get(runner)
        if committer is None:
            committer = cls._byRunner[runner] = cls(runner)
        return committer

    def add(self, commit: Commit) -> None:
        """
        Commit C{commit} in the batch running next.
        """
        self._pending.append(commit)
        if self._ready():
            self._start()

    def _ready(self) -> bool:
        running = self._running
        return not running or (
            running < self.atOnce and len(self._pending) >= self.fullBatch
        )

    def _start(self) -> None:
        batch, self._pending = self._pending, []
        self._running += 1
        self.batches += 1
        runner = self._runner()
        if runner is None:  # not used any more: run where the caller would
            runner = threads.currentRunner()
        runner(commitBatch, batch).addBoth(self._done, batch)

    def _done(self, outcome: object, batch: list[Commit]) -> None:
        self._running -= 1
        failure = outcome if isinstance(outcome, Failure) else None
        for commit in batch:
            commit.end(failure)
        if self._pending and self._ready():
            self._start()
