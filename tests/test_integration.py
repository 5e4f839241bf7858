"""
Integration tests over real loopback sockets: an in-process server on the
real reactor (C{reactor.listenTCP(0, ESMTPFactory(...))}), and Python's
smtplib (or a raw socket) as the client, run in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import os
import smtplib
import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from esmtpkit import ESMTPFactory, ESMTPHandler, ESMTPProtocol
from esmtpkit.handlers import Maildir
from esmtpkit.testing import parseReplies

from .helpers import (
    LOOPBACK,
    maildirFiles,
    readReplies,
    readUntilClosed,
    splitReceived,
    tempDir,
    waitUntil,
)

reactor: Any = _reactor
MiB = 1024 * 1024


class Store:
    """
    What the recording handlers of one test saw.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.disconnects = 0


class RecordingHandler(ESMTPHandler):
    """
    Accepts everything and records each message: envelope, session id, size
    and sha256 of C{rawHeaders} + BODY chunks, and the bytes themselves when
    C{keep} is true.
    """

    def __init__(self, store: Store, keep: bool = True) -> None:
        self.store = store
        self.keep = keep
        self._reset()

    def _reset(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        self._data = bytearray()

    def _add(self, data: bytes) -> None:
        self._hash.update(data)
        self._size += len(data)
        if self.keep:
            self._data += data

    def DATA(self) -> Any:
        self._reset()
        return super().DATA()

    def EOH(self) -> None:
        transaction = self.session.transaction
        assert transaction is not None
        self._add(transaction.rawHeaders)

    def BODY(self, chunk: bytes) -> Any:
        self._add(chunk)

    def EOM(self) -> Any:
        transaction = self.session.transaction
        assert transaction is not None
        self.store.messages.append(
            {
                "session": self.session.id,
                "sender": transaction.sender,
                "recipients": [r.address for r in transaction.recipients],
                "size": self._size,
                "sha256": self._hash.hexdigest(),
                "data": bytes(self._data) if self.keep else None,
            }
        )
        return super().EOM()

    def DISCONNECT(self) -> None:
        self.store.disconnects += 1


class CountingProtocol(ESMTPProtocol):
    """
    Counts the bytes the server has read from its socket.
    """

    bytesIn = 0

    def dataReceived(self, data: bytes) -> None:
        self.bytesIn += len(data)
        super().dataReceived(data)


class SlowBodyHandler(RecordingHandler):
    """
    An C{async def} BODY that takes a reactor turn per chunk, and measures,
    at each chunk, how far the server's reads are ahead of what the handler
    has consumed, and whether the connection is still being read while the
    BODY hook is pending.
    """

    def __init__(self, store: Store, stats: dict[str, int], factory: Any) -> None:
        super().__init__(store, keep=False)
        self.stats = stats
        self.factory = factory
        self.protocol: Any = None

    def CONNECT(self) -> Any:
        (self.protocol,) = self.factory.connections
        return super().CONNECT()

    # The ignore: ESMTPHandler annotates BODY as returning None, though the
    # interface lets it return a Deferred or be async def.
    async def BODY(self, chunk: bytes) -> Any:
        stats = self.stats
        self._add(chunk)
        stats["consumed"] += len(chunk)
        stats["maxAhead"] = max(
            stats["maxAhead"], self.protocol.bytesIn - stats["consumed"]
        )
        await deferLater(reactor, 0, lambda: None)
        stats["pendingChecks"] += 1
        if self.protocol.transport in reactor.getReaders():
            stats["readWhilePending"] += 1


class NotifyingMaildir(Maildir):
    """
    A Maildir handler (fsync on) that counts DISCONNECT calls.
    """

    def __init__(self, path: str, store: Store) -> None:
        super().__init__(path, fsync=True)
        self.store = store

    def DISCONNECT(self) -> None:
        super().DISCONNECT()
        self.store.disconnects += 1


class IntegrationTests(TestCase):
    """
    smtplib and raw sockets against an in-process server on 127.0.0.1.
    """

    timeout = 120

    def startServer(self, handlerFactory: Any, **overrides: Any) -> tuple[int, Any]:
        """
        Listen on an ephemeral loopback port; the port is closed and the
        server's connections are waited for (or aborted) at cleanup.
        """
        overrides.setdefault("hostname", "mx.example.test")
        factory = ESMTPFactory(handlerFactory, **overrides)
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(lambda: ensureDeferred(self._stopServer(port, factory)))
        return port.getHost().port, factory

    async def _stopServer(self, port: Any, factory: Any) -> None:
        await port.stopListening()
        try:
            await waitUntil(lambda: not factory.connections, timeout=10)
        except AssertionError:
            for protocol in list(factory.connections):
                protocol.transport.abortConnection()
            await waitUntil(lambda: not factory.connections, timeout=5)

    async def test_severalMessagesOneConnection(self) -> None:
        """
        smtplib sends several messages over one connection; each arrives
        with its envelope and exact bytes, the server advertises PIPELINING,
        and DISCONNECT is called once.
        """
        store = Store()
        port, factory = self.startServer(lambda: RecordingHandler(store))
        messages = [
            b"From: a@example.org\r\nSubject: message %d\r\n\r\nBody of message %d.\r\n"
            b".leading dot\r\n..two dots\r\n" % (i, i)
            for i in range(5)
        ]

        def client() -> tuple[bool, list[Any]]:
            with smtplib.SMTP(
                LOOPBACK, port, local_hostname="client.example", timeout=30
            ) as smtp:
                smtp.ehlo()
                pipelining = smtp.has_extn("pipelining")
                refused = [
                    smtp.sendmail(
                        f"sender{i}@example.org",
                        [f"r{i}@example.net", "postmaster"],
                        message,
                    )
                    for i, message in enumerate(messages)
                ]
            return pipelining, refused

        pipelining, refused = await deferToThread(client)
        self.assertTrue(pipelining)
        self.assertEqual(refused, [{}] * 5)
        self.assertEqual([m["data"] for m in store.messages], messages)
        self.assertEqual(
            [m["sender"] for m in store.messages],
            [f"sender{i}@example.org" for i in range(5)],
        )
        self.assertEqual(
            [m["recipients"] for m in store.messages],
            [[f"r{i}@example.net", "postmaster"] for i in range(5)],
        )
        self.assertEqual(len({m["session"] for m in store.messages}), 1)
        await waitUntil(lambda: store.disconnects == 1)
        self.assertEqual(list(factory.connections), [])

    async def test_pipelinedTransactionsInOneWrite(self) -> None:
        """
        Two complete transactions, a NOOP and QUIT pipelined in three
        send()s, as RFC 2920 allows (the client waits only after EHLO and
        for each 354; a message is followed by the next commands in the same
        write) are all processed: the replies come in order, both messages
        arrive intact, and the server closes after QUIT.
        """
        store = Store()
        port, _ = self.startServer(lambda: RecordingHandler(store))
        first = b"Subject: one\r\n\r\nfirst body\r\n"
        second = b"Subject: two\r\n\r\nsecond body\r\n..stuffed\r\n"
        writes = [
            (
                b"MAIL FROM:<a@example.org>\r\n"
                b"RCPT TO:<b@example.org>\r\n"
                b"RCPT TO:<c@example.org>\r\n"
                b"DATA\r\n",
                4,
            ),
            (
                first + b".\r\nMAIL FROM:<>\r\nRCPT TO:<d@example.org>\r\nDATA\r\n",
                4,
            ),
            (second + b".\r\nNOOP\r\nQUIT\r\n", 0),
        ]

        def client() -> tuple[list[Any], bytes, bool]:
            with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
                before, _ = readReplies(sock, 1)
                sock.sendall(b"EHLO client.example\r\n")
                ehlo, _ = readReplies(sock, 1)
                data = b""
                for wire, count in writes:
                    sock.sendall(wire)
                    if count:
                        _, more = readReplies(sock, count, timeout=30)
                        data += more
                more, closed = readUntilClosed(sock, timeout=30)
                data += more
            return before + ehlo, data, closed

        opening, data, closed = await deferToThread(client)
        self.assertEqual([r.code for r in opening], [220, 250])
        self.assertIn("PIPELINING", opening[1].lines)
        replies, rest = parseReplies(data)
        self.assertEqual(rest, b"")
        self.assertEqual(
            [r.code for r in replies],
            [250, 250, 250, 354, 250, 250, 250, 354, 250, 250, 221],
        )
        self.assertTrue(closed)
        self.assertEqual(
            [m["data"] for m in store.messages],
            [first, b"Subject: two\r\n\r\nsecond body\r\n.stuffed\r\n"],
        )
        self.assertEqual(
            [m["recipients"] for m in store.messages],
            [["b@example.org", "c@example.org"], ["d@example.org"]],
        )

    async def test_fiftyMegabyteMessage(self) -> None:
        """
        A 50 MB message (with dot-stuffed lines) sent by smtplib arrives
        intact: same size and sha256 as sent.
        """
        store = Store()
        port, _ = self.startServer(
            lambda: RecordingHandler(store, keep=False), maxMessageSize=64 * MiB
        )
        message = _bigMessage(50 * MiB)
        self.assertGreaterEqual(len(message), 50 * MiB)
        expected = hashlib.sha256(message).hexdigest()

        def client() -> dict[str, Any]:
            with smtplib.SMTP(
                LOOPBACK, port, local_hostname="client.example", timeout=60
            ) as smtp:
                return smtp.sendmail("a@example.org", ["b@example.org"], message)

        refused = await deferToThread(client)
        self.assertEqual(refused, {})
        (received,) = store.messages
        self.assertEqual(received["size"], len(message))
        self.assertEqual(received["sha256"], expected)

    async def test_dotStuffedLinesRoundTripIntoMaildir(self) -> None:
        """
        Lines that start with one or more dots (and a message whose first
        line is a dot line) are stored in the Maildir (fsync on) exactly as
        the client meant them, after the Received: header.
        """
        path = tempDir(self) / "Maildir"
        port, _ = self.startServer(lambda: Maildir(str(path), fsync=True))
        messages = [
            b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.x\r\n..x\r\nx.\r\n.\r\n. \r\n",
            b".first line is a dot line\r\n..and the second\r\n.\r\nend\r\n",
            b"Subject: only headers\r\n.X-Dotted: header\r\n",
        ]

        def client() -> list[Any]:
            with smtplib.SMTP(
                LOOPBACK, port, local_hostname="client.example", timeout=30
            ) as smtp:
                return [
                    smtp.sendmail("a@example.org", ["b@example.org"], m)
                    for m in messages
                ]

        refused = await deferToThread(client)
        self.assertEqual(refused, [{}] * len(messages))
        files = maildirFiles(path, "new")
        self.assertEqual(len(files), len(messages))
        stored = sorted(splitReceived(p.read_bytes())[1] for p in files)
        self.assertEqual(stored, sorted(messages))
        self.assertEqual(maildirFiles(path, "tmp"), [])

    async def test_slowBodyHandlerAppliesBackpressure(self) -> None:
        """
        With a BODY hook that takes a reactor turn per chunk, the server
        stops reading the socket while the hook is pending, so the bytes it
        has read but the handler has not consumed stay small (about one
        read), far below the message size; the message still arrives intact.
        """
        store = Store()
        stats = {
            "consumed": 0,
            "maxAhead": 0,
            "pendingChecks": 0,
            "readWhilePending": 0,
        }
        holder: dict[str, Any] = {}
        port, factory = self.startServer(
            lambda: SlowBodyHandler(store, stats, holder["factory"]), chunkSize=4096
        )
        factory.protocol = CountingProtocol
        holder["factory"] = factory
        size = 8 * MiB
        message = _bigMessage(size)

        def client() -> dict[str, Any]:
            with smtplib.SMTP(
                LOOPBACK, port, local_hostname="client.example", timeout=60
            ) as smtp:
                return smtp.sendmail("a@example.org", ["b@example.org"], message)

        refused = await deferToThread(client)
        self.assertEqual(refused, {})
        (received,) = store.messages
        self.assertEqual(received["sha256"], hashlib.sha256(message).hexdigest())
        # Thousands of 4 KiB BODY calls, each pending for a reactor turn.
        self.assertGreater(stats["pendingChecks"], size // 4096 - 10)
        # The socket was never being read while a BODY hook was pending...
        self.assertEqual(stats["readWhilePending"], 0)
        # ...so the server never held much more than one read (64 KiB) of
        # unconsumed input. Without backpressure it reads ahead by megabytes.
        self.assertLess(stats["maxAhead"], 512 * 1024)

    async def test_disconnectMidDataLeavesNothingInMaildir(self) -> None:
        """
        A client that disconnects in the middle of DATA leaves nothing in
        the Maildir's new/ or tmp/ (the partial file, which existed, is
        removed), and DISCONNECT is called once.
        """
        path = tempDir(self) / "Maildir"
        store = Store()
        port, _ = self.startServer(lambda: NotifyingMaildir(str(path), store))

        def client() -> tuple[socket.socket, list[int]]:
            sock = socket.create_connection((LOOPBACK, port), timeout=30)
            codes = []
            for line in (
                None,
                b"EHLO client.example\r\n",
                b"MAIL FROM:<a@example.org>\r\n",
                b"RCPT TO:<b@example.org>\r\n",
                b"DATA\r\n",
            ):
                if line is not None:
                    sock.sendall(line)
                replies, _ = readReplies(sock, 1)
                codes += [r.code for r in replies]
            sock.sendall(b"Subject: cut short\r\n\r\n" + b"partial line\r\n" * 20000)
            return sock, codes

        sock, codes = await deferToThread(client)
        try:
            self.assertEqual(codes, [220, 250, 250, 250, 354])
            await waitUntil(lambda: len(maildirFiles(path, "tmp")) == 1)
            await waitUntil(lambda: maildirFiles(path, "tmp")[0].stat().st_size > 0)
        finally:
            sock.close()
        await waitUntil(lambda: store.disconnects == 1)
        self.assertEqual(maildirFiles(path, "tmp"), [])
        self.assertEqual(maildirFiles(path, "new"), [])


def _bigMessage(size: int) -> bytes:
    """
    A message of at least C{size} bytes: headers, then 76-character lines of
    random base64 with, every 1000 lines, lines starting with dots.
    """
    head = b"From: big@example.org\r\nSubject: big\r\n\r\n"
    raw = base64.b64encode(os.urandom(size * 3 // 4 + 1024))
    lines = []
    for number, i in enumerate(range(0, len(raw), 76)):
        if number % 1000 == 0:
            lines += [b"." + raw[i : i + 76], b".", b".."]
        else:
            lines.append(raw[i : i + 76])
    body = b"\r\n".join(lines) + b"\r\n"
    return head + body
