"""
The Relay handler's STARTTLS and AUTH towards an in-process esmtpkit
upstream with the test PKI (tests/tlshelpers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from esmtpkit import ESMTPFactory
from esmtpkit.handlers import Relay
from esmtpkit.security.auth import makePortal
from esmtpkit.security.tls import ServerTLS
from esmtpkit.testing import LogCollector

from .helpers import LOOPBACK
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
