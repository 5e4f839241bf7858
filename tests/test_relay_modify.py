"""
The Relay handler applying modifications: a L{Chain} C{[Modifier, Relay]}
in front of an in-process esmtpkit Maildir upstream (delivery headers off,
the relay's C{Received:} off) on loopback; the upstream stores exactly what
L{ModifiedMessage} renders, for the envelope the modifications make. Also:
no spool, an undeclared modifier, quarantine, C{spool=always}, and the
memory of a 20 MB message spooled (tracemalloc peak).
"""

from __future__ import annotations

import smtplib
import tracemalloc
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.python.usage import UsageError
from twisted.trial.unittest import TestCase

from esmtpkit import ESMTPFactory, ESMTPHandler, LMTPFactory
from esmtpkit.handlers import Chain, Maildir, Relay
from esmtpkit.handlers.relay.options import RelayOptions
from esmtpkit.testing import SMTPTestConnection, dotStuff

from .helpers import LOOPBACK, maildirFiles, splitReceived, waitUntil
from .modifyhelpers import (
    MESSAGE,
    MODIFIED,
    NEW_RECIPIENTS,
    NEW_SENDER,
    RECIPIENTS,
    SENDER,
    Modifier,
    headersOnly,
    rendered,
)
from .relayhelpers import Upstream, UpstreamScript, listen, reactor, smtp


class BareUpstream(Upstream):
    """
    The recording upstream Maildir without Return-Path, X-Original-To and
    Delivered-To: one copy, the message after the upstream's C{Received:}.
    """

    def __init__(self, path: str, script: UpstreamScript) -> None:
        Maildir.__init__(
            self,
            path,
            fsync=False,
            returnPath=False,
            deliveredTo=False,
            originalTo=False,
        )
        self.script = script


class Undeclared(Modifier):
    """
    A modifier that does not declare C{mayModify}.
    """

    mayModify = False


class RelayModifyTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        Modifier.rendered = []
        self.script = UpstreamScript()
        self.path = Path(self.mktemp()) / "Maildir"

    async def upstream(self) -> int:
        path, script = str(self.path), self.script
        return await listen(
            self, ESMTPFactory(lambda: BareUpstream(path, script), hostname="up.test")
        )

    async def relayed(
        self, filter: type[ESMTPHandler] = Modifier, what: str = "all", **kw: Any
    ) -> tuple[Any, ...]:
        upstream = await self.upstream()

        class Filter(filter):  # type: ignore[valid-type,misc]
            pass

        Filter.what = what  # type: ignore[attr-defined]

        def relay() -> Relay:
            return Relay(LOOPBACK, upstream, reactor=reactor, received=False, **kw)

        factory = ESMTPFactory(Chain.factory([Filter, relay]), hostname="relay.test")
        port = await listen(self, factory)

        def client() -> Any:
            with smtp(port) as s:
                s.mail(SENDER)
                replies = [s.rcpt(r)[0] for r in RECIPIENTS]
                return replies, s.data(MESSAGE)

        replies = await deferToThread(client)
        if replies[1][0] != 451:  # else the relay dropped the upstream session
            await waitUntil(lambda: "QUIT" in self.script.commands)
        return replies

    def stored(self) -> list[bytes]:
        if not (self.path / "new").exists():
            return []
        return [
            splitReceived(f.read_bytes())[1] for f in maildirFiles(self.path, "new")
        ]

    async def test_everyModification(self) -> None:
        """
        Headers, body, sender and recipients changed: the upstream envelope
        is redone (RSET, MAIL, RCPT) and the upstream stores exactly what
        L{ModifiedMessage} renders, byte for byte.
        """
        rcpts, (code, _) = await self.relayed()
        self.assertEqual((rcpts, code), ([250, 250], 250))
        [message] = self.stored()
        self.assertEqual(message, MODIFIED)
        self.assertEqual(message, rendered(None))
        self.assertEqual(
            self.script.commands,
            [f"MAIL {SENDER}"]
            + [f"RCPT {r}" for r in RECIPIENTS]
            + ["RSET", f"MAIL {NEW_SENDER}"]
            + [f"RCPT {r}" for r in NEW_RECIPIENTS]
            + ["DATA", "QUIT"],
        )

    async def test_headersOnly(self) -> None:
        """
        Header changes alone: the envelope is kept (no RSET), the body is
        the one received, dot-stuffed upstream and stored as sent.
        """
        rcpts, (code, _) = await self.relayed(what="headers")
        self.assertEqual(code, 250)
        [message] = self.stored()
        self.assertEqual(message, headersOnly(MESSAGE))
        self.assertEqual(message, rendered(MESSAGE.split(b"\r\n\r\n", 1)[1]))
        self.assertEqual(
            self.script.commands,
            [f"MAIL {SENDER}"] + [f"RCPT {r}" for r in RECIPIENTS] + ["DATA", "QUIT"],
        )

    async def test_spoolAlwaysUnmodified(self) -> None:
        """
        C{spool="always"} without modifications relays the message as
        received.
        """
        _, (code, _) = await self.relayed(what="nothing", spool="always")
        self.assertEqual(code, 250)
        self.assertEqual(self.stored(), [MESSAGE])

    async def test_neverSpooled(self) -> None:
        """
        C{spool="never"}: the message streamed, so its modifications cannot
        be applied: 451 4.3.0, nothing stored.
        """
        _, (code, text) = await self.relayed(spool="never")
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.3.0"), text)
        self.assertEqual(self.stored(), [])

    async def test_undeclaredModifier(self) -> None:
        """
        A filter that modifies without declaring C{mayModify}: the relay
        streamed, and refuses with 451 4.3.0.
        """
        _, (code, text) = await self.relayed(filter=Undeclared)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.3.0"), text)
        self.assertEqual(self.stored(), [])

    async def test_quarantine(self) -> None:
        """
        A quarantined message is refused (550 5.7.1), the upstream
        transaction reset, nothing stored.
        """
        _, (code, text) = await self.relayed(what="quarantine")
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.7.1"), text)
        self.assertNotIn(b"spam", text)
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.script.commands[-2:], ["RSET", "QUIT"])

    async def test_spoolUnusable(self) -> None:
        """
        A spool folder that cannot be written: DATA gets 452 4.3.1, and
        nothing reaches the upstream.
        """
        missing = str(Path(self.mktemp()) / "missing")
        upstream = await self.upstream()

        def relay() -> Relay:
            return Relay(LOOPBACK, upstream, reactor=reactor, spoolDir=missing)

        port = await listen(self, ESMTPFactory(Chain.factory([Modifier, relay])))

        def client() -> Any:
            with smtp(port) as s:
                s.mail(SENDER)
                s.rcpt(RECIPIENTS[0])
                return s.docmd("DATA")

        code, text = await deferToThread(client)
        self.assertEqual((code, text[:5]), (452, b"4.3.1"))
        await waitUntil(lambda: "QUIT" in self.script.commands)
        self.assertNotIn("DATA", self.script.commands)
        self.assertEqual(self.stored(), [])

    async def test_twentyMegabytesSpooled(self) -> None:
        """
        A 20 MB message through C{[Modifier, Relay]} (headers changed) is
        spooled to a file, not memory: the upstream stores every byte, and
        the peak of Python memory allocated meanwhile (tracemalloc, the
        in-process upstream included) stays far below the message's size.
        """
        upstream = await self.upstream()

        class Headers(Modifier):
            what = "headers"

        def relay() -> Relay:
            return Relay(LOOPBACK, upstream, reactor=reactor, received=False)

        conn = SMTPTestConnection(
            Chain.factory([Headers, relay]), maxMessageSize=64 * 1024 * 1024
        )
        self.addCleanup(conn.close)
        conn.send(b"EHLO client.test\r\n")
        conn.send(f"MAIL FROM:<{SENDER}>\r\n".encode())
        for address in RECIPIENTS:
            conn.send(f"RCPT TO:<{address}>\r\n".encode())
        conn.send(b"DATA\r\n")
        got: list[Any] = []

        def replies(count: int) -> Any:
            def ready() -> bool:
                got.extend(conn.replies())
                return len(got) >= count

            return waitUntil(ready, timeout=60)

        await replies(5)
        self.assertEqual([r.code for r in got], [250, 250, 250, 250, 354])
        head, _ = MESSAGE.split(b"\r\n\r\n", 1)
        line = b"0123456789" * 7 + b"abcdefgh\r\n"
        chunk = line * 800
        count = 20 * 1024 * 1024 // len(chunk)
        tracemalloc.start()
        try:
            conn.send(dotStuff(head + b"\r\n\r\n")[:-3])
            for _ in range(count):
                conn.send(chunk)
            conn.send(b".\r\n")
            await replies(6)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(got[-1].code, 250, got[-1])
        [path] = maildirFiles(self.path, "new")
        size = path.stat().st_size
        expected = len(headersOnly(head + b"\r\n\r\n")) + count * len(chunk)
        self.assertGreater(size, expected)  # and the upstream's Received:
        with path.open("rb") as file:
            file.seek(size - len(chunk))
            self.assertEqual(file.read(), chunk)
        self.assertLess(peak, 4 * 1024 * 1024, f"peak {peak} for {expected} bytes")


class RelayModifyLMTPTests(TestCase):
    """
    Recipient changes between an LMTP client and an LMTP upstream: each of
    the client's recipients gets the upstream's reply for it, or, when a
    handler deleted it, the reply for the recipient added instead.
    """

    timeout = 60

    async def lmtp(self, refuse: set[str]) -> tuple[list[Any], UpstreamScript]:
        Modifier.rendered = []
        script = UpstreamScript(refuse=refuse)
        path = str(Path(self.mktemp()) / "Maildir")
        upstream = await listen(
            self, LMTPFactory(lambda: BareUpstream(path, script), hostname="up.test")
        )

        def relay() -> Relay:
            return Relay(LOOPBACK, upstream, reactor=reactor, lmtp=True, tls="off")

        factory = LMTPFactory(Chain.factory([Modifier, relay]), hostname="relay.test")
        port = await listen(self, factory)

        def client() -> Any:
            with smtplib.LMTP(LOOPBACK, port, local_hostname="c.test") as s:
                s.ehlo()
                s.mail(SENDER)
                for address in RECIPIENTS:
                    s.rcpt(address)
                s.putcmd("DATA")
                s.getreply()
                s.send(dotStuff(MESSAGE))
                return [s.getreply() for _ in RECIPIENTS]

        replies = await deferToThread(client)
        await waitUntil(lambda: "QUIT" in script.commands)
        return replies, script

    async def test_replacedRecipientRefused(self) -> None:
        """
        bob is replaced by dave, whom the upstream refuses: bob gets dave's
        refusal, carol her delivery.
        """
        replies, script = await self.lmtp({"dave@example.org"})
        self.assertEqual(
            replies[0], (550, b"5.1.1 <dave@example.org>: no such user here")
        )
        self.assertEqual(replies[1][0], 250)
        self.assertIn("RCPT dave@example.org", script.commands)

    async def test_replacedRecipientDelivered(self) -> None:
        """
        Both delivered: both get 250.
        """
        replies, _ = await self.lmtp(set())
        self.assertEqual([code for code, _ in replies], [250, 250])


class RelaySpoolOptionTests(TestCase):
    def test_spoolOption(self) -> None:
        """
        C{spool=} and C{spool-dir=} become the relay's keywords; a bad mode
        or an unusable folder is a usage error.
        """
        options = RelayOptions()
        options.parseOptions(["--spool=always", f"--spool-dir={self.path()}"])
        keywords = options.relayKeywords()
        self.assertEqual(
            (keywords["spool"], keywords["spoolDir"]), ("always", self.path())
        )
        self.assertEqual(Relay(**keywords).spool, "always")
        self.assertRaises(
            UsageError, RelayOptions().parseOptions, ["--spool=sometimes"]
        )
        missing = RelayOptions()
        missing.parseOptions([f"--spool-dir={self.path()}/missing"])
        self.assertRaises(UsageError, missing.relayKeywords)
        self.assertRaises(ValueError, Relay, spool="sometimes")

    def path(self) -> str:
        if not hasattr(self, "_path"):
            self._path = self.mktemp()
            Path(self._path).mkdir()
        return self._path
