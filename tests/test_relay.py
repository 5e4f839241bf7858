"""
The Relay handler against real upstreams in the same reactor: an esmtpkit
server with the Maildir handler (no fsync) on loopback, over SMTP and LMTP,
with and without STARTTLS and AUTH; the client is smtplib in a thread.
"""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from esmtpkit import NO_OPINION, ESMTPFactory, ESMTPHandler, LMTPFactory, PerRecipient
from esmtpkit.handlers import Chain, Relay
from esmtpkit.security.auth import makePortal
from esmtpkit.security.tls import ServerTLS
from esmtpkit.testing import LogCollector, dotStuff

from .helpers import LOOPBACK, freePort, maildirFiles, readReplies, waitUntil
from .relayhelpers import Upstream, UpstreamScript, listen, reactor, smtp
from .tlshelpers import memoryChecker, sharedPKI

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: relayed\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a dotted line\r\n"
    b"..\r\n"
    b".\r\n"
    b"\xe2\x82\xac 8-bit line\r\n"
)


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """
    The Received: headers at the top of a delivered message, and the rest
    (delivery headers a Maildir may add above them are skipped).
    """
    received = []
    names = (b"received:", b"return-path:", b"delivered-to:", b"x-original-to:")
    while data.lower().startswith(names):
        end = data.find(b"\r\n")
        while data[end + 2 : end + 3] in (b" ", b"\t"):
            end = data.find(b"\r\n", end + 2)
        if data[:9].lower() == b"received:":
            received.append(data[: end + 2])
        data = data[end + 2 :]
    return received, data


class RelayTests(TestCase):
    """
    A relay (an in-process esmtpkit server with L{Relay}) in front of an
    in-process esmtpkit upstream.
    """

    timeout = 60

    def setUp(self) -> None:
        self.script = UpstreamScript()
        self.maildir = Path(self.mktemp()) / "Maildir"

    async def upstream(self, lmtp: bool = False, **kwargs: Any) -> int:
        script, path = self.script, str(self.maildir)
        kind = LMTPFactory if lmtp else ESMTPFactory
        factory = kind(
            lambda: Upstream(path, script), hostname="upstream.test", **kwargs
        )
        self.upstreamFactory = factory
        return await listen(self, factory)

    async def relay(self, port: int, face: str = "smtp", **options: Any) -> int:
        options.setdefault("host", LOOPBACK)
        options.setdefault("commandTimeout", 10)
        options.setdefault("dataTimeout", 10)
        kind = LMTPFactory if face == "lmtp" else ESMTPFactory
        factory = kind(
            lambda: Relay(port=port, reactor=reactor, **options),
            hostname="relay.test",
        )
        self.relayFactory = factory
        return await listen(self, factory)

    def delivered(self) -> list[bytes]:
        return [p.read_bytes() for p in maildirFiles(self.maildir, "new")]

    async def test_messageRelayed(self) -> None:
        """
        A message reaches the upstream's Maildir intact (dotted lines, 8-bit
        text), after the relay's Received: header and the upstream's; the
        upstream saw EHLO with the relay's host name, and the client got
        the upstream's own reply to the end of the message.
        """
        port = await self.relay(await self.upstream())

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                return s.data(MESSAGE)

        code, text = await deferToThread(client)
        self.assertEqual(code, 250)
        self.assertEqual(len(self.script.ids), 1)
        self.assertIn(f"as {self.script.ids[0]}", text.decode())
        [data] = self.delivered()
        received, rest = _split(data)
        self.assertEqual(rest, MESSAGE)
        self.assertEqual(len(received), 2)
        self.assertIn(b"by upstream.test", received[0])
        self.assertIn(b"by relay.test", received[1])
        self.assertEqual(self.script.helos, ["relay.test"])

    async def test_refusedRecipientAtRcpt(self) -> None:
        """
        A recipient the upstream refuses is refused at RCPT with the
        upstream's code and text; the message goes to the other one only.
        """
        self.script.refuse = {"nobody@example.org"}
        port = await self.relay(await self.upstream())

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                refused = s.rcpt("nobody@example.org")
                accepted = s.rcpt("bob@example.org")
                return refused, accepted, s.data(MESSAGE)

        refused, accepted, data = await deferToThread(client)
        await waitUntil(lambda: "QUIT" in self.script.commands)
        self.assertEqual(
            refused, (550, b"5.1.1 <nobody@example.org>: no such user here")
        )
        self.assertEqual(accepted[0], 250)
        self.assertEqual(data[0], 250)
        self.assertEqual(
            self.script.commands,
            [
                "MAIL alice@sender.test",
                "RCPT nobody@example.org",
                "RCPT bob@example.org",
                "DATA",
                "QUIT",
            ],
        )
        self.assertEqual(len(self.delivered()), 1)

    async def test_temporaryFailureAtData(self) -> None:
        """
        A 4xx of the upstream to DATA is the client's, nothing is delivered;
        after RSET the next transaction goes through on the same upstream
        connection.
        """
        self.script.dataReply = (451, "4.3.2 Not now, try later")
        port = await self.relay(await self.upstream())

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                data = s.docmd("DATA")
                reset = s.rset()
                self.script.dataReply = None
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                return data, reset, s.data(MESSAGE)

        data, reset, second = await deferToThread(client)
        self.assertEqual(data, (451, b"4.3.2 Not now, try later"))
        self.assertEqual(reset[0], 250)
        self.assertEqual(second[0], 250)
        self.assertEqual(self.script.connections, 1)
        self.assertEqual(self.script.commands.count("RSET"), 1)
        self.assertEqual(len(self.delivered()), 1)

    async def test_permanentFailureAtEnd(self) -> None:
        """
        A 5xx at the end of the message stays a 5xx, with its text.
        """
        self.script.eom = (554, "5.7.1 Message refused by policy")
        port = await self.relay(await self.upstream())

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                return s.data(MESSAGE)

        self.assertEqual(
            await deferToThread(client), (554, b"5.7.1 Message refused by policy")
        )

    async def test_upstreamDown(self) -> None:
        """
        An upstream nobody listens for: 451 4.4.1 at MAIL.
        """
        port = await self.relay(freePort())

        def client() -> Any:
            with smtp(port) as s:
                return s.mail("alice@sender.test")

        code, text = await deferToThread(client)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.4.1 "), text)

    async def test_upstreamSlowAtRcpt(self) -> None:
        """
        An upstream slower than the command timeout: 451 4.4.2 at RCPT, and
        the next MAIL opens a new upstream session.
        """
        self.script.delay["RCPT"] = 5
        port = await self.relay(await self.upstream(), commandTimeout=0.5)

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                rcpt = s.rcpt("bob@example.org")
                s.rset()
                return rcpt, s.mail("alice@sender.test")

        rcpt, mail = await deferToThread(client)
        self.assertEqual(rcpt[0], 451)
        self.assertTrue(rcpt[1].startswith(b"4.4.2 "), rcpt)
        self.assertEqual(mail[0], 250)
        self.assertEqual(self.script.connections, 2)

    async def test_upstreamSlowAtEnd(self) -> None:
        """
        An upstream that does not answer the end of the message in time:
        451 4.4.2, never 250.
        """
        self.script.delay["EOM"] = 5
        port = await self.relay(await self.upstream(), dataTimeout=0.5)

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                return s.data(MESSAGE)

        code, text = await deferToThread(client)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.4.2 "), text)

    async def test_upstreamIdleCloseReconnects(self) -> None:
        """
        An upstream that closed the session between two transactions (its
        idle timeout): the second MAIL opens a new session and succeeds.
        """
        port = await self.relay(await self.upstream(idleTimeout=0.5))
        client = await deferToThread(smtp, port)
        self.addCleanup(client.close)

        def transaction() -> Any:
            client.mail("alice@sender.test")
            client.rcpt("bob@example.org")
            return client.data(MESSAGE)

        self.assertEqual((await deferToThread(transaction))[0], 250)
        await waitUntil(lambda: not self.upstreamFactory.connections, timeout=10)
        self.assertEqual((await deferToThread(transaction))[0], 250)
        self.assertEqual(self.script.connections, 2)
        self.assertEqual(len(self.delivered()), 2)

    async def test_clientResetMirrored(self) -> None:
        """
        RSET from the client after RCPT is RSET upstream; the upstream
        session ends with QUIT when the client quits.
        """
        port = await self.relay(await self.upstream())

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                s.rset()

        await deferToThread(client)
        await waitUntil(lambda: "QUIT" in self.script.commands)
        self.assertEqual(
            self.script.commands,
            ["MAIL alice@sender.test", "RCPT bob@example.org", "RSET", "QUIT"],
        )

    async def test_clientGoneMidMessage(self) -> None:
        """
        A client that disconnects in the middle of a message: the upstream
        session is dropped, so the upstream delivers nothing.
        """
        port = await self.relay(await self.upstream())

        def client() -> None:
            with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
                readReplies(sock, 1)
                for line in (
                    b"EHLO client.test",
                    b"MAIL FROM:<alice@sender.test>",
                    b"RCPT TO:<bob@example.org>",
                    b"DATA",
                ):
                    sock.sendall(line + b"\r\n")
                    readReplies(sock, 1)
                sock.sendall(b"Subject: cut\r\n\r\n" + b"x" * 200000)

        await deferToThread(client)
        await waitUntil(lambda: self.script.connections == 1)
        await waitUntil(lambda: not self.upstreamFactory.connections, timeout=10)
        self.assertEqual(self.delivered(), [])
        self.assertEqual(maildirFiles(self.maildir, "tmp"), [])

    async def test_parametersPassedOn(self) -> None:
        """
        SIZE, BODY and the DSN parameters reach the upstream, which offers
        them all.
        """
        port = await self.relay(await self.upstream())

        def client() -> Any:
            with smtp(port) as s:
                mail = s.docmd(
                    "MAIL",
                    "FROM:<alice@sender.test> SIZE=300 BODY=8BITMIME RET=HDRS "
                    "ENVID=a+2Bb",
                )
                rcpt = s.docmd(
                    "RCPT",
                    "TO:<bob@example.org> NOTIFY=FAILURE "
                    "ORCPT=rfc822;bob+2Bx@example.org",
                )
                return mail, rcpt

        mail, rcpt = await deferToThread(client)
        self.assertEqual((mail[0], rcpt[0]), (250, 250))
        self.assertEqual(
            self.script.params,
            [{"SIZE": "300", "BODY": "8BITMIME", "RET": "HDRS", "ENVID": "a+b"}],
        )

    async def test_lmtpUpstreamPerRecipient(self) -> None:
        """
        Under an LMTP upstream the reply for each recipient reaches an LMTP
        client as it is; an SMTP client gets the temporary failure (the
        rule of one reply per message).
        """
        self.script.eom = PerRecipient([None, (452, "4.2.2 Mailbox full")])
        upstream = await self.upstream(lmtp=True)
        lmtpPort = await self.relay(upstream, "lmtp", lmtp=True, tls="off")
        smtpPort = await self.relay(upstream, lmtp=True, tls="off")

        def lmtpClient() -> Any:
            with smtplib.LMTP(LOOPBACK, lmtpPort, local_hostname="c.test") as s:
                s.ehlo()
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                s.rcpt("carol@example.org")
                s.putcmd("DATA")
                s.getreply()
                s.send(dotStuff(MESSAGE))
                return [s.getreply(), s.getreply()]

        def smtpClient() -> Any:
            with smtp(smtpPort) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                s.rcpt("carol@example.org")
                return s.data(MESSAGE)

        first, second = await deferToThread(lmtpClient)
        self.assertEqual(first[0], 250)
        self.assertEqual(second, (452, b"4.2.2 Mailbox full"))
        self.assertEqual(await deferToThread(smtpClient), (452, b"4.2.2 Mailbox full"))

    async def test_lmtpUpstreamOnUnixSocket(self) -> None:
        """
        An LMTP upstream on a unix socket (host is its path): LHLO, and the
        message delivered.
        """
        script, path = self.script, str(self.maildir)
        factory = LMTPFactory(lambda: Upstream(path, script), hostname="lmtp.test")
        socketPath = str(Path(self.mktemp()).absolute()) + ".sock"
        listening = reactor.listenUNIX(socketPath, factory)
        self.addCleanup(listening.stopListening)
        port = await self.relay(1, host=socketPath, lmtp=True, tls="off")

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                return s.data(MESSAGE)

        self.assertEqual((await deferToThread(client))[0], 250)
        self.assertEqual(self.script.helos, ["relay.test"])
        self.assertEqual(len(self.delivered()), 1)
        await waitUntil(lambda: not factory.connections, timeout=10)

    async def test_pipelinedClient(self) -> None:
        """
        A client that pipelines MAIL, RCPTs and DATA gets the upstream's
        replies in order.
        """
        self.script.refuse = {"nobody@example.org"}
        port = await self.relay(await self.upstream())

        def client() -> list[Any]:
            with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
                readReplies(sock, 1)
                sock.sendall(b"EHLO client.test\r\n")
                readReplies(sock, 1)
                sock.sendall(
                    b"MAIL FROM:<alice@sender.test>\r\n"
                    b"RCPT TO:<nobody@example.org>\r\n"
                    b"RCPT TO:<bob@example.org>\r\n"
                    b"DATA\r\n"
                )
                replies, _ = readReplies(sock, 4)
                sock.sendall(dotStuff(MESSAGE) + b"QUIT\r\n")
                more, _ = readReplies(sock, 2)
                return [r.code for r in replies + more]

        self.assertEqual(await deferToThread(client), [250, 550, 250, 354, 250, 221])
        self.assertEqual(len(self.delivered()), 1)

    async def test_modificationsRefused(self) -> None:
        """
        A message with modifications asked before the relay's EOM (as by an
        earlier handler of a chain) is not forwarded: 451 4.3.0, nothing
        delivered.
        """

        class Modifying(Relay):
            def EOM(self) -> Any:
                transaction = self.session.transaction
                assert transaction is not None
                transaction.modifications.addHeader("X-Spam", "yes")
                return super().EOM()

        port = await self.upstream()
        factory = ESMTPFactory(
            lambda: Modifying(LOOPBACK, port, reactor=reactor), hostname="relay.test"
        )
        relayPort = await listen(self, factory)

        def client() -> Any:
            with smtp(relayPort) as s:
                s.mail("alice@sender.test")
                s.rcpt("bob@example.org")
                return s.data(MESSAGE)

        code, text = await deferToThread(client)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.3.0 "), text)
        await waitUntil(lambda: not self.upstreamFactory.connections, timeout=10)
        self.assertEqual(self.delivered(), [])


class Refuse(ESMTPHandler):
    """
    A chain member that refuses one recipient at RCPT (and has no opinion
    on the others).
    """

    address = "carol@example.org"

    def RCPT(self, recipient: str, params: Any) -> Any:
        if recipient == self.address:
            return (550, "5.7.1 Not this one")
        return NO_OPINION


class RelayChainTests(TestCase):
    """
    The relay in a L{Chain}: the upstream envelope follows the client's.
    """

    timeout = 60

    async def relayed(self, members: Any) -> tuple[UpstreamScript, Any]:
        script = UpstreamScript()
        path = str(Path(self.mktemp()) / "Maildir")
        upstream = await listen(
            self, ESMTPFactory(lambda: Upstream(path, script), hostname="up.test")
        )

        def relay() -> Relay:
            return Relay(LOOPBACK, upstream, reactor=reactor, commandTimeout=10)

        factory = ESMTPFactory(Chain.factory(members(relay)), hostname="relay.test")
        port = await listen(self, factory)

        def client() -> Any:
            with smtp(port) as s:
                s.mail("alice@sender.test")
                replies = [s.rcpt(r)[0] for r in ("bob@example.org", Refuse.address)]
                return replies, s.data(MESSAGE)[0]

        replies = await deferToThread(client)
        await waitUntil(lambda: "QUIT" in script.commands)
        return script, replies

    async def test_filterFirst(self) -> None:
        """
        A filter before the relay refuses a recipient: the upstream never
        hears of it.
        """
        script, replies = await self.relayed(lambda relay: [Refuse, relay])
        self.assertEqual(replies, ([250, 550], 250))
        self.assertEqual(
            script.commands,
            ["MAIL alice@sender.test", "RCPT bob@example.org", "DATA", "QUIT"],
        )

    async def test_refusedAfterRelay(self) -> None:
        """
        A member after the relay refuses a recipient the upstream accepted:
        at DATA the relay starts the upstream transaction again without it.
        """
        script, replies = await self.relayed(lambda relay: [relay, Refuse])
        self.assertEqual(replies, ([250, 550], 250))
        self.assertEqual(
            script.commands,
            [
                "MAIL alice@sender.test",
                "RCPT bob@example.org",
                "RCPT carol@example.org",
                "RSET",
                "MAIL alice@sender.test",
                "RCPT bob@example.org",
                "DATA",
                "QUIT",
            ],
        )


class RelayTLSTests(TestCase):
    """
    STARTTLS and AUTH to an esmtpkit upstream with the test PKI.
    """

    timeout = 60

    def setUp(self) -> None:
        self.logged = LogCollector()
        globalLogPublisher.addObserver(self.logged)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged)
        self.pki = sharedPKI()
        self.script = UpstreamScript()
        self.maildir = str(Path(self.mktemp()) / "Maildir")

    async def serve(self, upstreamTLS: bool = True, **relay: Any) -> int:
        script, path = self.script, self.maildir
        upstream = ESMTPFactory(
            lambda: Upstream(path, script),
            hostname="upstream.test",
            tls=ServerTLS(str(self.pki.serverCert), str(self.pki.serverKey))
            if upstreamTLS
            else None,
            portal=makePortal([memoryChecker(relayuser="s3cret")]),
        )
        port = self.upstreamPort = await listen(self, upstream)
        factory = ESMTPFactory(
            lambda: Relay(LOOPBACK, port, reactor=reactor, commandTimeout=10, **relay),
            hostname="relay.test",
        )
        return await listen(self, factory)

    def assertLogged(self, text: str) -> None:
        """
        A warning about the relay's upstream that contains C{text} was
        logged, with the session id.
        """
        lines = [formatEvent(e) for e in self.logged.events]
        found = [
            line for line in lines if "relay to 127.0.0.1" in line and text in line
        ]
        self.assertTrue(found, lines)
        self.assertTrue(found[0].startswith("session "), found)

    def send(self, port: int) -> Any:
        def client() -> Any:
            with smtp(port) as s:
                mail = s.mail("alice@sender.test")
                if mail[0] != 250:
                    return mail
                s.rcpt("bob@example.org")
                return s.data(MESSAGE)

        return deferToThread(client)

    async def test_requiredVerified(self) -> None:
        """
        tls=required with the test CA: the upstream saw EHLO again over TLS
        and the message went through encrypted, authenticated as relayuser.
        """
        port = await self.serve(
            tls="required",
            caFile=str(self.pki.caCert),
            user="relayuser",
            password="s3cret",
        )
        self.assertEqual((await self.send(port))[0], 250)
        self.assertEqual(len(self.script.tls), 2)
        self.assertIsNone(self.script.tls[0])
        self.assertTrue(self.script.tls[1].version.startswith("TLSv1."))
        self.assertEqual(self.script.identities, ["relayuser"])

    async def test_requiredUntrusted(self) -> None:
        """
        tls=required, the upstream's certificate not signed by a trusted CA
        (the certificate file of another server as CA): 451 4.7.5, nothing
        sent in the clear.
        """
        port = await self.serve(tls="required", caFile=str(self.pki.serverCertB))
        code, text = await self.send(port)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.7.5 "), text)
        self.assertEqual(self.script.commands, [])

    async def test_requiredNotOffered(self) -> None:
        """
        tls=required and an upstream without STARTTLS: 451 4.7.5.
        """
        port = await self.serve(False, tls="required", caFile=str(self.pki.caCert))
        code, text = await self.send(port)
        self.assertEqual(code, 451)
        self.assertEqual(text, b"4.7.5 Requested action aborted: upstream TLS failed")
        self.assertLogged(f"127.0.0.1:{self.upstreamPort} does not offer STARTTLS")

    async def test_opportunistic(self) -> None:
        """
        tls=opportunistic encrypts without verifying (the test CA is not
        given); without STARTTLS offered it goes on in the clear.
        """
        port = await self.serve()
        self.assertEqual((await self.send(port))[0], 250)
        self.assertIsNotNone(self.script.tls[-1])

    async def test_wrongPassword(self) -> None:
        """
        Credentials the upstream refuses: 451 4.7.0 at MAIL.
        """
        port = await self.serve(user="relayuser", password="wrong")
        code, text = await self.send(port)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.7.0 "), text)

    async def test_noCredentialsInTheClear(self) -> None:
        """
        Without TLS the credentials are not sent (451 4.7.0) unless
        insecureAuth says so.
        """
        port = await self.serve(False, user="relayuser", password="s3cret")
        code, text = await self.send(port)
        self.assertEqual(code, 451)
        self.assertLogged("credentials not sent")
        self.assertEqual(self.script.identities, [])


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
