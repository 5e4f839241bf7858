"""
Many clients at once over loopback (issue 4, "Robustness"): a real reactor,
an L{ESMTPFactory} with the L{Maildir} handler and default settings on
127.0.0.1 (port 0), and Twisted client protocols speaking raw SMTP.

  - 200 concurrent clients, all connected at the same time, each send a
    unique message (some pipelining, some not, bodies of different sizes
    and awkward lines, written in pieces): every message is delivered
    exactly once and byte for byte (sha256 of the content after the
    C{Received:} header), C{tmp/} is left empty and nothing is logged as a
    failure.
  - Clients killed in the middle of DATA (C{abortConnection}, after part of
    their message reached the server's C{tmp/} file) leave nothing in
    C{tmp/} or C{new/}, while the clients around them are delivered.

The default per-IP connection limit (50) does not apply to loopback
(C{connectionLimitExempt}), which is what lets 200 local clients in.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from esmtpkit import ESMTPFactory, Reply
from esmtpkit.handlers import Maildir
from esmtpkit.testing import LogCollector, dotStuff, parseReplies

from .helpers import (
    LOOPBACK,
    maildirFiles,
    splitDelivery,
    splitReceived,
    tempDir,
    waitUntil,
)

CLIENTS = 200


class ReplyReader(Protocol):
    """
    The client side of one SMTP connection: C{send} bytes, C{reply()} for
    the next reply (a Deferred), C{closed} fires when the connection ends.
    """

    transport: Any

    def __init__(self) -> None:
        self.buffer = b""
        self.replies: list[Reply] = []
        self.waiters: list[Deferred[Reply]] = []
        self.closed: Deferred[None] = Deferred()
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        replies, self.buffer = parseReplies(self.buffer)
        for reply in replies:
            if self.waiters:
                self.waiters.pop(0).callback(reply)
            else:
                self.replies.append(reply)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.errback(
                ConnectionDone(f"connection lost waiting for a reply: {reason}")
            )
        self.closed.callback(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def reply(self) -> Deferred[Reply]:
        if self.replies:
            return succeed(self.replies.pop(0))
        if self.lost:
            return Deferred.fromCoroutine(self._lostReply())
        waiter: Deferred[Reply] = Deferred()
        self.waiters.append(waiter)
        return waiter

    async def _lostReply(self) -> Reply:
        raise ConnectionDone("connection already lost")


class Barrier:
    """
    C{wait()} fires for everyone once C{count} callers have called it.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.waiting: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        if len(self.waiting) == self.count:
            for waiter in self.waiting:
                waiter.callback(None)
        return d


def uniqueMessage(n: int, rng: random.Random) -> bytes:
    """
    Message number C{n}: headers naming it, and a body of random size with
    lines that need dot-stuffing, long lines and 8-bit bytes (CRLF line
    endings only).
    """
    lines = [
        f"Message-ID: <{n}.{rng.getrandbits(64):x}@concurrency.test>".encode(),
        f"Subject: message {n}".encode(),
        b"X-Folded: first",
        b"\tsecond",
        b"",
    ]
    for i in range(rng.choice([0, 1, 5, 50, 500, 3000])):
        kind = rng.randrange(8)
        if kind == 0:
            lines.append(b"." * rng.randint(1, 3) + b"dotted %d" % i)
        elif kind == 1:
            lines.append(b"")
        elif kind == 2:
            lines.append(
                bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randint(1, 40)))
            )
        elif kind == 3:
            lines.append(b"x" * rng.randint(900, 5000))
        else:
            lines.append(b"line %d of message %d %x" % (i, n, rng.getrandbits(32)))
    return b"\r\n".join(lines) + b"\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ConcurrencyTests(TestCase):
    """
    Concurrent loopback clients against one server with the Maildir handler.
    """

    timeout = 60

    def setUp(self) -> None:
        self.maildir = tempDir(self) / "Maildir"
        self.sentTo: dict[int, list[bytes]] = {}
        self.log = LogCollector()
        self.factory = ESMTPFactory(
            lambda: Maildir(str(self.maildir)),
            hostname="mx.concurrency.test",
            logObserver=self.log,
        )
        self.port = reactor.listenTCP(0, self.factory, backlog=512, interface=LOOPBACK)
        self.addCleanup(self.port.stopListening)
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        self.endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, address.port)
        self.peak = 0
        self.clients: list[ReplyReader] = []
        self.addCleanup(self._dropClients)

    def _dropClients(self) -> Deferred[Any]:
        """
        Abort every client connection still open, and wait until the server
        has seen them all go.
        """
        for client in self.clients:
            if not client.lost and client.transport is not None:
                client.transport.abortConnection()
        return Deferred.fromCoroutine(
            waitUntil(lambda: not self.factory.connections, timeout=10)
        )

    async def connect(self) -> ReplyReader:
        client: ReplyReader = await connectProtocol(self.endpoint, ReplyReader())
        self.clients.append(client)
        return client

    async def expect(self, client: ReplyReader, code: int, what: str) -> Reply:
        reply = await client.reply()
        if reply.code != code:
            raise AssertionError(f"{what}: expected {code}, got {reply!r}")
        return reply

    async def deliver(
        self, n: int, message: bytes, rng: random.Random, barrier: Barrier | None
    ) -> None:
        """
        One client: greeting, (wait for the others,) EHLO, a transaction
        with one to three recipients, pipelined or not, the message written
        in random pieces, QUIT.
        """
        client = await self.connect()
        await self.expect(client, 220, f"client {n} greeting")
        if barrier is not None:
            self.peak = max(self.peak, len(self.factory.connections))
            await barrier.wait()
        client.send(b"EHLO client%d.concurrency.test\r\n" % n)
        ehlo = await self.expect(client, 250, f"client {n} EHLO")
        assert "PIPELINING" in ehlo.lines, ehlo
        recipients = [
            b"rcpt%d.%d@example.org" % (n, i) for i in range(rng.randint(1, 3))
        ]
        self.sentTo[n] = recipients
        envelope = [b"MAIL FROM:<sender%d@example.com>\r\n" % n] + [
            b"RCPT TO:<%s>\r\n" % r for r in recipients
        ]
        if n % 2:
            client.send(b"".join(envelope) + b"DATA\r\n")
            codes = [250] * len(envelope) + [354]
        else:
            codes = []
            for command in envelope:
                client.send(command)
                await self.expect(client, 250, f"client {n} {command!r}")
            client.send(b"DATA\r\n")
            codes = [354]
        for code in codes:
            await self.expect(client, code, f"client {n} envelope")
        wire = dotStuff(message)
        cuts = sorted(rng.sample(range(len(wire)), min(3, len(wire))))
        for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            client.send(wire[start:end])
        await self.expect(client, 250, f"client {n} end of data")
        client.send(b"QUIT\r\n")
        await self.expect(client, 221, f"client {n} QUIT")
        await client.closed

    async def killMidData(self, n: int, message: bytes) -> None:
        """
        One client that sends part of its message, waits until the server
        has written that part to a C{tmp/} file, then aborts the connection.
        """
        client = await self.connect()
        await self.expect(client, 220, f"killed client {n} greeting")
        for command in (
            b"EHLO killed%d.concurrency.test\r\n" % n,
            b"MAIL FROM:<killed%d@example.com>\r\n" % n,
            b"RCPT TO:<victim%d@example.org>\r\n" % n,
        ):
            client.send(command)
            await self.expect(client, 250, f"killed client {n} {command!r}")
        client.send(b"DATA\r\n")
        await self.expect(client, 354, f"killed client {n} DATA")
        marker = b"killed-marker-%d" % n
        # The filler after the marker pushes it out of the handler's file
        # buffer onto the disk.
        filler = b"filler line to flush the file buffer\r\n" * 2000
        wire = dotStuff(message)
        half = wire.rfind(b"\r\n", 0, len(wire) // 2) + 2  # a line boundary
        client.send(wire[:half] + marker + b"\r\n" + filler)

        def partWritten() -> bool:
            for path in maildirFiles(self.maildir, "tmp"):
                try:
                    if marker in path.read_bytes():
                        return True
                except FileNotFoundError:  # another client's message moved on
                    pass
            return False

        await waitUntil(partWritten, timeout=10)
        client.transport.abortConnection()
        await client.closed

    def assertDelivered(self, messages: dict[int, bytes]) -> None:
        """
        C{new/} holds exactly C{messages}, each once per recipient (its own
        copy, with its C{Delivered-To:}) and byte for byte, and C{tmp/} is
        empty.
        """
        expected = {sha(m): n for n, m in messages.items()}
        self.assertEqual(len(expected), len(messages), "test messages are not unique")
        delivered: dict[str, int] = {}
        copies: dict[tuple[str, bytes], int] = {}
        for path in maildirFiles(self.maildir, "new"):
            data = path.read_bytes()
            received, content = splitReceived(data)
            self.assertIn(b"mx.concurrency.test", received)
            digest = sha(content)
            self.assertIn(
                digest, expected, f"{path.name}: not one of the messages sent"
            )
            (to,) = [
                line[len(b"Delivered-To: ") :]
                for line in splitDelivery(data)[0].split(b"\r\n")
                if line.startswith(b"Delivered-To: ")
            ]
            copies[digest, to] = copies.get((digest, to), 0) + 1
            delivered[digest] = 1
        self.assertEqual(
            sorted(expected[d] for d in delivered), sorted(messages), "messages missing"
        )
        self.assertEqual(
            {n: sorted(to for (d, to) in copies if expected[d] == n) for n in messages},
            {n: sorted(self.sentTo[n]) for n in messages},
            "a recipient without its copy",
        )
        self.assertEqual(
            [key for key, count in copies.items() if count != 1], [], "delivered twice"
        )
        self.assertEqual(maildirFiles(self.maildir, "tmp"), [])
        self.assertEqual(maildirFiles(self.maildir, "cur"), [])
        failures = [e for e in self.log.events if "log_failure" in e]
        self.assertEqual(failures, [])

    async def test_concurrentClientsDeliverExactlyOnce(self) -> None:
        """
        200 clients, all connected at once, each deliver one unique message:
        every message is in C{new/} exactly once, byte for byte.
        """
        rng = random.Random(4)
        messages = {n: uniqueMessage(n, rng) for n in range(CLIENTS)}
        barrier = Barrier(CLIENTS)
        await gatherResults(
            [
                Deferred.fromCoroutine(
                    self.deliver(n, message, random.Random(n), barrier)
                )
                for n, message in messages.items()
            ],
            consumeErrors=True,
        )
        self.assertEqual(
            self.peak, CLIENTS, "the clients were not all connected at once"
        )
        await waitUntil(lambda: not self.factory.connections, timeout=10)
        self.assertDelivered(messages)

    async def test_clientKilledMidDataLeavesNothing(self) -> None:
        """
        Clients aborted in the middle of DATA, among clients that complete,
        leave nothing behind in C{tmp/} or C{new/}; the others are delivered.
        """
        rng = random.Random(5)
        messages = {n: uniqueMessage(n, rng) for n in range(30)}
        killed = {n: uniqueMessage(1000 + n, rng) for n in range(5)}
        order = [(False, n) for n in messages] + [(True, n) for n in killed]
        random.Random(6).shuffle(order)
        work = [
            Deferred.fromCoroutine(
                self.killMidData(n, killed[n])
                if kill
                else self.deliver(n, messages[n], random.Random(n), None)
            )
            for kill, n in order
        ]
        await gatherResults(work, consumeErrors=True)
        await waitUntil(lambda: not self.factory.connections, timeout=10)
        self.assertDelivered(messages)
        for path in maildirFiles(self.maildir, "new"):
            self.assertNotIn(b"killed-marker-", path.read_bytes())
        self.assertEqual(list(self.factory.connections), [])
