"""
Tests for the durable commit of the L{Maildir} handler (C{fsync=True}, so
with the real reactor: the flushes run in threads): the directory flush
after the rename into C{new/}, batched across messages committed at the
same time; a cancelled commit and a failed flush leave nothing; and end to
end, a real server on loopback whose handler modifies messages at EOM.
"""

from __future__ import annotations

import errno
import gc
import os
import smtplib
import stat
import threading
import weakref
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from esmtpkit import ESMTPFactory, threads
from esmtpkit.handlers import Maildir, delivery
from esmtpkit.handlers import commit as committing
from esmtpkit.handlers.commit import Commit, Committer
from esmtpkit.testing import SMTPTestConnection, dotStuff

from .helpers import (
    LOOPBACK,
    maildirFiles,
    splitDelivery,
    splitReceived,
    tempDir,
    waitUntil,
)

MESSAGE = b"From: a@example.org\r\nSubject: durable\r\n\r\nbody\r\n"


class _FakeFiles:
    """
    Stands for a message's L{delivery.MessageFiles}: records what the
    batch did to it.
    """

    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def startWriting(self) -> None:
        self.log.append(f"write {self.name}")

    def flush(self) -> None:
        self.log.append(f"flush {self.name}")

    def move(self, newDir: str) -> None:
        self.log.append(f"move {self.name}")

    def closeAll(self) -> None:
        pass

    def remove(self) -> None:
        self.log.append(f"remove {self.name}")


class CommitterTests(TestCase):
    """
    L{Committer} with a fake thread: when batches start, whom each one
    answers, and the order of the file work within a batch.
    """

    def setUp(self) -> None:
        self.started: list[tuple[Deferred[None], list[Commit]]] = []
        self.log: list[str] = []

        def runner(function: Any, batch: list[Commit]) -> Deferred[None]:
            self.assertIs(function, committing.commitBatch)
            self.started.append((Deferred(), batch))
            return self.started[-1][0]

        self.runner = runner  # the committer holds it weakly
        self.committer = Committer(runner)
        self.committer.atOnce = 1
        self.patch(committing, "fsyncDirectory", lambda path: self.log.append(path))

    def commit(self, name: str, fired: list[Any]) -> Commit:
        files: Any = _FakeFiles(self.log, name)
        commit = Commit(files, lambda: self.log.append(f"build {name}"), "/n", name)
        commit.start(name, self.committer).addCallback(fired.append)
        return commit

    def runBatch(self, index: int) -> None:
        deferred, batch = self.started[index]
        committing.commitBatch(batch)
        deferred.callback(None)

    def test_callersDuringABatchShareTheNext(self) -> None:
        """
        The first commit starts a batch; commits that come while it runs
        wait for the next one, which starts when it ends and answers all of
        them: three commits, two batches, two flushes of new/.
        """
        fired: list[str] = []
        self.commit("first", fired)
        self.assertEqual(len(self.started), 1)
        self.commit("second", fired)
        self.commit("third", fired)
        self.assertEqual(len(self.started), 1)
        self.runBatch(0)
        self.assertEqual(fired, ["first"])
        self.assertEqual(len(self.started), 2)
        self.runBatch(1)
        self.assertEqual(fired, ["first", "second", "third"])
        self.assertEqual(self.committer.batches, 2)
        self.assertEqual(self.log.count("/n"), 2)

    def test_twoBatchesAtOnce(self) -> None:
        """
        By default a second batch starts while one runs once it has eight
        messages (fewer wait for the running one); a third waits for either
        to end.
        """
        self.committer.atOnce = Committer.atOnce
        self.assertEqual((Committer.atOnce, Committer.fullBatch), (2, 8))
        fired: list[str] = []
        self.commit("first", fired)
        for name in "abcdefg":
            self.commit(name, fired)
        self.assertEqual(len(self.started), 1)
        self.commit("h", fired)
        self.assertEqual(len(self.started), 2)
        self.assertEqual([c._describe for c in self.started[1][1]], list("abcdefgh"))
        self.commit("late", fired)
        self.runBatch(1)
        self.assertEqual(fired, list("abcdefgh"))
        self.assertEqual(len(self.started), 2)  # "late" alone waits
        self.runBatch(0)
        self.assertEqual(len(self.started), 3)
        self.runBatch(2)
        self.assertEqual(fired, [*"abcdefgh", "first", "late"])

    def test_runnerNotKeptAlive(self) -> None:
        """
        The committer of a runner (as a live server's, on its own reactor)
        does not keep the runner alive: once the runner is gone, so is its
        committer.
        """

        def runner(function: Any, batch: Any) -> Deferred[None]:
            return Deferred()

        with threads.runningWith(runner):
            committer = weakref.ref(Committer.current())
        self.assertIsNotNone(committer())
        del runner
        gc.collect()
        self.assertIsNone(committer())

    def test_orderWithinABatch(self) -> None:
        """
        In a batch, every message is built, then all are written out, then
        each is flushed and moved, then new/ is flushed once for all.
        """
        fired: list[str] = []
        self.commit("first", fired)
        self.commit("a", fired)
        self.commit("b", fired)
        self.runBatch(0)
        del self.log[:]
        self.runBatch(1)
        self.assertEqual(
            self.log,
            ["build a", "build b", "write a", "write b"]
            + ["flush a", "move a", "flush b", "move b", "/n"],
        )

    def test_failureReachesItsCommit(self) -> None:
        """
        A message whose flush fails gets 452 4.3.1 and its files are
        removed; the others of its batch are delivered; the next commit
        gets a new batch.
        """
        fired: list[Any] = []
        self.commit("first", fired)
        bad = self.commit("bad", fired)
        self.commit("good", fired)

        def failing() -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        bad.files.flush = failing  # type: ignore[method-assign]
        self.runBatch(0)
        self.runBatch(1)
        self.assertEqual(fired, ["first", delivery.STORAGE_FAILED, "good"])
        self.assertIn("remove bad", self.log)
        self.assertNotIn("move bad", self.log)
        self.assertNotIn("remove good", self.log)
        self.commit("later", fired)
        self.runBatch(2)
        self.assertEqual(fired[-1], "later")

    def test_batchFailsAsAWhole(self) -> None:
        """
        A batch whose thread work could not run fails every commit of it
        with the error, and removes their files.
        """
        fired: list[Any] = []
        failures: list[Any] = []
        files: Any = _FakeFiles(self.log, "x")
        Commit(files, lambda: None, "/n", "x").start("x", self.committer).addCallbacks(
            fired.append, failures.append
        )
        self.started[0][0].errback(RuntimeError("no thread"))
        self.assertEqual(fired, [])
        self.assertEqual([f.type for f in failures], [RuntimeError])
        self.assertIn("remove x", self.log)


class BlockedFlush:
    """
    Replaces L{committing.fsyncDirectory}: counts the directory flushes, and
    holds the first one until L{release}.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.calls: list[str] = []
        self._gate = threading.Event()
        self._real = delivery.fsyncDirectory
        testCase.patch(committing, "fsyncDirectory", self)
        testCase.addCleanup(self._gate.set)

    def __call__(self, path: str) -> None:
        self.calls.append(path)
        if len(self.calls) == 1:
            self._gate.wait(20)
        self._real(path)

    def release(self) -> None:
        self._gate.set()


class DurableCommitTests(TestCase):
    """
    The commit with C{fsync=True} over L{SMTPTestConnection}s, the flushes
    in real threads.
    """

    timeout = 60

    def setUp(self) -> None:
        self.path = tempDir(self) / "Maildir"

    def connect(self, **settings: Any) -> SMTPTestConnection:
        path = str(self.path)
        conn = SMTPTestConnection(
            lambda: Maildir(path, fsync=True), threadRunner=deferToThread, **settings
        )
        conn.send(b"EHLO client.example\r\n")
        conn.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        return conn

    async def test_batchedDirectoryFlush(self) -> None:
        """
        Ten messages committed at once, one batch at a time, cost two
        flushes of new/: the first message's, and one for the nine that
        came while it ran. No message is answered before a flush that began
        after its rename ended.
        """
        self.patch(Committer, "atOnce", 1)
        flush = BlockedFlush(self)
        count = 10
        conns = [self.connect() for _ in range(count)]
        for conn in conns:
            conn.send(dotStuff(MESSAGE))
        await waitUntil(lambda: len(maildirFiles(self.path, "new")) == 1, 20)
        # The first renamed, its flush held: nobody has a 250 yet, and the
        # nine others wait for the next batch.
        for conn in conns:
            self.assertNotIn(b"250 2.0.0 Message", conn.transport.value())
        self.assertEqual(len(maildirFiles(self.path, "new")), 1)
        flush.release()
        await waitUntil(
            lambda: all(b"250 2.0.0 Message" in c.transport.value() for c in conns),
            20,
        )
        self.assertEqual(flush.calls, [str(self.path / "new")] * 2)
        self.assertEqual(maildirFiles(self.path, "tmp"), [])

    async def test_cancelledDuringDirectoryFlush(self) -> None:
        """
        The shutdown deadline passes while new/ is being flushed: 421, and
        the message, already renamed, is taken out of new/ again once the
        flush is over (its 250 never went out).
        """
        flush = BlockedFlush(self)
        conn = self.connect()
        conn.send(dotStuff(MESSAGE))
        await waitUntil(lambda: len(maildirFiles(self.path, "new")) == 1, 20)
        drained: list[None] = []
        conn.factory.drain(0).addCallback(drained.append)
        conn.clock.advance(0)
        self.assertEqual([r.code for r in conn.replies()][-1:], [421])
        flush.release()
        await waitUntil(lambda: bool(drained), 20)
        self.assertEqual(maildirFiles(self.path, "new"), [])
        self.assertEqual(maildirFiles(self.path, "tmp"), [])

    async def test_fileFlushFails(self) -> None:
        """
        A flush of the message's file that fails (ENOSPC, as NFS or a
        delayed allocation reports it) gives 452 4.3.1 and leaves nothing.
        """
        real = os.fsync

        def fsync(fd: int) -> None:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(fd)

        self.patch(os, "fsync", fsync)
        conn = self.connect()
        conn.send(dotStuff(MESSAGE))
        await waitUntil(lambda: b"\r\n452 " in conn.transport.value(), 20)
        self.assertIn(b"452 4.3.1 Insufficient system storage", conn.transport.value())
        self.assertEqual(maildirFiles(self.path, "new"), [])
        self.assertEqual(maildirFiles(self.path, "tmp"), [])

    async def test_directoryFlushFails(self) -> None:
        """
        A flush of new/ that fails takes the message back out of new/ and
        gives 452 4.3.1.
        """

        def failing(path: str) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.patch(committing, "fsyncDirectory", failing)
        conn = self.connect()
        conn.send(dotStuff(MESSAGE))
        await waitUntil(lambda: b"\r\n452 " in conn.transport.value(), 20)
        self.assertIn(b"452 4.3.1", conn.transport.value())
        self.assertEqual(maildirFiles(self.path, "new"), [])
        self.assertEqual(maildirFiles(self.path, "tmp"), [])


class Rewriting(Maildir):
    """
    Changes every message at EOM: a header added, one changed, one
    deleted, the body replaced; a recipient added and one deleted.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, fsync=True)

    def EOM(self) -> Any:
        transaction = self.session.transaction
        assert transaction is not None
        changes = transaction.modifications
        changes.addHeader("X-Filtered", "by esmtpkit\n\ttwice folded")
        changes.changeHeader("Subject", "[checked] original subject")
        changes.deleteHeader("X-Remove-Me")
        changes.replaceBody(iter([b"The new body.\r\n", b".\r\n", b"..end\r\n"]))
        changes.addRecipient("archive@example.net")
        changes.deleteRecipient("Spamtrap@example.net")
        return super().EOM()


class EndToEndTests(TestCase):
    """
    A real server on 127.0.0.1, smtplib as the client.
    """

    timeout = 60

    async def test_modifiedAtEOM(self) -> None:
        """
        The message stored for each remaining recipient is the modified
        one, byte for byte: delivery headers for the new envelope, the
        server's Received: header, the changed header section (unchanged
        lines exact, folding kept), the new body.
        """
        path = tempDir(self) / "Maildir"
        factory = ESMTPFactory(lambda: Rewriting(str(path)), hostname="mx.test")
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        message = (
            b"From: Alice <alice@example.org>\r\n"
            b"X-Remove-Me: please\r\n"
            b"Subject: original\r\n\tsubject\r\n"
            b"X-Folded: a\r\n  b\r\n"
            b"\r\n"
            b"The old body.\r\n"
        )

        def send() -> Any:
            with smtplib.SMTP(LOOPBACK, number, "client.test", timeout=30) as smtp:
                return smtp.sendmail(
                    "alice@example.org",
                    ["bob@example.net", "spamtrap@example.net"],
                    message,
                )

        self.assertEqual(await deferToThread(send), {})
        await waitUntil(lambda: not factory.connections, 10)
        stored = {}
        for file in maildirFiles(path, "new"):
            delivered, rest = splitDelivery(file.read_bytes())
            received, content = splitReceived(rest)
            self.assertIn(b"by mx.test (esmtpkit) with ESMTP id ", received)
            stored[delivered] = content
        self.assertEqual(
            sorted(stored),
            [
                b"Return-Path: <alice@example.org>\r\n"
                b"X-Original-To: %s\r\nDelivered-To: %s\r\n" % (a, a)
                for a in (b"archive@example.net", b"bob@example.net")
            ],
        )
        expected = (
            b"From: Alice <alice@example.org>\r\n"
            b"Subject: [checked] original subject\r\n"
            b"X-Folded: a\r\n  b\r\n"
            b"X-Filtered: by esmtpkit\r\n\ttwice folded\r\n"
            b"\r\n"
            b"The new body.\r\n.\r\n..end\r\n"
        )
        self.assertEqual(list(stored.values()), [expected, expected])
        self.assertEqual(maildirFiles(path, "tmp"), [])
