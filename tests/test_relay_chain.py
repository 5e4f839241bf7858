"""
The Relay handler in a L{Chain <esmtpkit.handlers.Chain>} in front of an
in-process esmtpkit upstream: the upstream envelope follows the client's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from esmtpkit import NO_OPINION, ESMTPFactory, ESMTPHandler
from esmtpkit.handlers import Chain, Relay

from .helpers import LOOPBACK, waitUntil
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
