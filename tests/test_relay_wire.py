"""
The Relay handler's wire towards the upstream, byte for byte, against an
upstream written by hand: dot-stuffing of a BDAT message, AUTH LOGIN, the
HELO fallback, a connection cut in the middle of a message, and a server
hook timeout shorter than the relay's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from esmtpkit import ESMTPFactory
from esmtpkit.handlers import Relay

from .helpers import LOOPBACK, waitUntil
from .relayhelpers import listen, reactor, smtp


class ScriptedUpstream(Protocol):
    """
    An upstream that speaks just enough SMTP by hand: it records every byte
    and, after the 354, closes the connection once C{cutAfter} bytes of the
    message have come (if set); C{silent}, it never answers the end of a
    message; C{oldServer}, it refuses EHLO (HELO only). Its EHLO offers
    AUTH LOGIN, which it takes from anyone.
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.buffer = b""
        self.inData = False
        self.login: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.write(b"220 scripted.test ESMTP\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.owner.received += data
        self.buffer += data
        while not self.inData and b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            verb = line[:4].upper()
            self.owner.lines.append(line)
            if self.login:
                self.login.append(line)
                step = (
                    b"334 UGFzc3dvcmQ6\r\n" if len(self.login) == 2 else b"235 ok\r\n"
                )
                self.transport.write(step)
                if len(self.login) == 3:
                    self.login = []
            elif verb == b"EHLO" and self.owner.oldServer:
                self.transport.write(b"502 5.5.1 what?\r\n")
            elif verb == b"EHLO":
                self.transport.write(
                    b"250-scripted.test\r\n250-AUTH LOGIN\r\n250 8BITMIME\r\n"
                )
            elif line == b"AUTH LOGIN":
                self.login = [line]
                self.transport.write(b"334 VXNlcm5hbWU6\r\n")
            elif verb == b"DATA":
                self.inData = True
                self.transport.write(b"354 go on\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.loseConnection()
            else:
                self.transport.write(b"250 ok\r\n")
        if self.inData:
            cut = self.owner.cutAfter
            if cut is not None and len(self.buffer) >= cut:
                self.transport.abortConnection()
            elif self.buffer.endswith(b"\r\n.\r\n"):
                self.owner.messages.append(self.buffer)
                self.buffer = b""
                self.inData = False
                if not self.owner.silent:
                    self.transport.write(b"250 2.0.0 taken\r\n")

    def connectionLost(self, reason: Any = None) -> None:
        self.owner.lost += 1


class ScriptedTests(TestCase):
    """
    The relay's wire towards the upstream, byte for byte, and a connection
    cut in the middle of a message.
    """

    timeout = 60

    async def setUpRelay(
        self,
        cutAfter: int | None = None,
        silent: bool = False,
        oldServer: bool = False,
        relayOptions: dict[str, Any] | None = None,
        **settings: Any,
    ) -> int:
        self.received = b""
        self.lines: list[bytes] = []
        self.oldServer = oldServer
        self.silent = silent
        self.lost = 0
        self.messages: list[bytes] = []
        self.cutAfter = cutAfter
        factory = Factory.forProtocol(lambda: ScriptedUpstream(self))
        upstream = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(upstream.stopListening)
        relay = ESMTPFactory(
            lambda: Relay(
                LOOPBACK,
                upstream.getHost().port,
                reactor=reactor,
                received=False,
                dataTimeout=10,
                commandTimeout=10,
                **(relayOptions or {}),
            ),
            hostname="relay.test",
            **settings,
        )
        return await listen(self, relay)

    async def test_bdatBodyWithoutLineEnding(self) -> None:
        """
        A BDAT message whose lines start with dots and whose end has no
        line ending goes upstream as DATA: dots doubled, CRLF added before
        the terminator.
        """
        port = await self.setUpRelay()
        body = b"Subject: b\r\n\r\n.one\r\n..two\r\n.\r\nlast"

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                s.send(b"BDAT %d LAST\r\n" % len(body) + body)
                return s.getreply()

        code, text = await deferToThread(client)
        self.assertEqual((code, text), (250, b"2.0.0 taken"))
        self.assertEqual(
            self.messages,
            [b"Subject: b\r\n\r\n..one\r\n...two\r\n..\r\nlast\r\n.\r\n"],
        )

    async def test_lostMidMessage(self) -> None:
        """
        The upstream connection lost in the middle of a message: the client
        gets 451 at the end of its data, never 250.
        """
        port = await self.setUpRelay(cutAfter=100000)

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                return s.data(b"Subject: big\r\n\r\n" + (b"z" * 78 + b"\r\n") * 20000)

        code, text = await deferToThread(client)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.4.2 "), text)
        self.assertEqual(self.messages, [])

    async def test_hookTimeoutDropsUpstream(self) -> None:
        """
        A server hook timeout shorter than the relay's data timeout: the
        client gets esmtpkit's 451 4.3.0, and the cancelled EOM drops the
        upstream connection at once.
        """
        port = await self.setUpRelay(silent=True, hookTimeout=0.5)

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                return s.data(b"Subject: x\r\n\r\nbody\r\n")

        started = reactor.seconds()
        code, text = await deferToThread(client)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.3.0 "), text)
        self.assertEqual(len(self.messages), 1)
        await waitUntil(lambda: self.lost == 1, timeout=5)
        self.assertLess(reactor.seconds() - started, 5)

    def sendOne(self, port: int) -> Any:
        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                return s.data(b"Subject: x\r\n\r\nbody\r\n")

        return deferToThread(client)

    async def test_authLogin(self) -> None:
        """
        An upstream that offers only AUTH LOGIN (and insecureAuth, as there
        is no TLS): the user name and password go base64-encoded, one per
        line, before MAIL.
        """
        credentials = {"user": "relay", "password": "pw", "insecureAuth": True}
        port = await self.setUpRelay(relayOptions=credentials)
        self.assertEqual((await self.sendOne(port))[0], 250)
        self.assertEqual(
            self.lines[:5],
            [
                b"EHLO relay.test",
                b"AUTH LOGIN",
                b"cmVsYXk=",
                b"cHc=",
                b"MAIL FROM:<alice@sender.test>",
            ],
        )

    async def test_heloFallback(self) -> None:
        """
        An upstream that refuses EHLO gets HELO, and the message without
        ESMTP parameters.
        """
        port = await self.setUpRelay(oldServer=True)

        def client() -> Any:
            with smtp(port) as s:
                s.docmd("MAIL", "FROM:<alice@sender.test> SIZE=100 BODY=8BITMIME")
                s.rcpt("bob@example.org")
                return s.data(b"Subject: x\r\n\r\nbody\r\n")

        self.assertEqual((await deferToThread(client))[0], 250)
        self.assertEqual(
            self.lines[:3],
            [b"EHLO relay.test", b"HELO relay.test", b"MAIL FROM:<alice@sender.test>"],
        )
