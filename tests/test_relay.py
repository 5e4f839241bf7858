"""
The Relay handler against real upstreams in the same reactor: an esmtpkit
server with the Maildir handler (no fsync) on loopback (TCP, SMTP and LMTP;
a unix socket), refusing, failing, stalling or closing as a test asks; the
client is smtplib (or a raw socket) in a thread. STARTTLS and AUTH are in
test_relay_tls.py, chains in test_relay_chain.py, the exact wire in
test_relay_wire.py.
"""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from esmtpkit import ESMTPFactory, LMTPFactory, PerRecipient
from esmtpkit.handlers import Relay
from esmtpkit.testing import dotStuff

from .helpers import LOOPBACK, freePort, maildirFiles, readReplies, waitUntil
from .relayhelpers import Upstream, UpstreamScript, listen, reactor, smtp

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
