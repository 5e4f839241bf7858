"""
The Webhook handler applying modifications: a L{Chain} C{[Modifier,
Webhook]} posting to a real twisted.web endpoint on 127.0.0.1 (started and
stopped by each test); the posted body is exactly what L{ModifiedMessage}
renders, the envelope the modified one, the signature valid; a
quarantined message is posted with its reason; a modified 20 MB message is
rendered file to file (tracemalloc peak).
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from typing import Any

from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from esmtpkit.handlers import Chain, Webhook
from esmtpkit.handlers.webhook import WebhookClient
from esmtpkit.testing import SMTPTestConnection, dotStuff

from .helpers import LOOPBACK, waitUntil
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
from .test_webhook import SECRET, Endpoint, reactor


class WebhookModifyTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        Modifier.rendered = []
        self.endpoint = Endpoint()
        self.port = reactor.listenTCP(0, Site(self.endpoint), interface=LOOPBACK)
        self.addCleanup(self.port.stopListening)
        url = f"http://{LOOPBACK}:{self.port.getHost().port}/hook"
        self.client = WebhookClient(url, SECRET, timeout=60)
        self.addCleanup(self.client.close)

    def connect(self, what: str) -> SMTPTestConnection:
        class Filter(Modifier):
            pass

        Filter.what = what
        client = self.client
        conn = SMTPTestConnection(
            Chain.factory([Filter, lambda: Webhook(client)]),
            maxMessageSize=64 * 1024 * 1024,
        )
        self.addCleanup(conn.close)
        assert conn.command("EHLO client.test").code == 250
        assert conn.command(f"MAIL FROM:<{SENDER}>").code == 250
        for address in RECIPIENTS:
            assert conn.command(f"RCPT TO:<{address}>").code == 250
        assert conn.command("DATA").code == 354
        return conn

    async def reply(self, conn: SMTPTestConnection) -> Any:
        got: list[Any] = []

        def ready() -> bool:
            got.extend(conn.replies())
            return bool(got)

        await waitUntil(ready, timeout=60)
        [reply] = got
        return reply

    async def post(self, what: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        conn = self.connect(what)
        conn.send(dotStuff(MESSAGE))
        reply = await self.reply(conn)
        [request] = self.endpoint.requests
        return reply, request, json.loads(request["envelope"])

    async def test_everyModification(self) -> None:
        """
        The endpoint gets the modified message byte for byte, the modified
        sender and recipients, its size, and a signature that verifies.
        """
        reply, request, envelope = await self.post("all")
        self.assertEqual(reply.code, 250)
        self.assertEqual(request["body"], MODIFIED)
        self.assertEqual(request["body"], rendered(None))
        self.assertTrue(request["verified"])
        self.assertEqual(envelope["sender"], NEW_SENDER)
        self.assertEqual(
            [r["address"] for r in envelope["recipients"]], list(NEW_RECIPIENTS)
        )
        self.assertEqual(envelope["size"], len(MODIFIED))
        self.assertIsNone(envelope["quarantine"])

    async def test_headersOnly(self) -> None:
        """
        Header changes alone: the body received follows the new header
        section; the envelope is the client's.
        """
        reply, request, envelope = await self.post("headers")
        self.assertEqual(reply.code, 250)
        self.assertEqual(request["body"], headersOnly(MESSAGE))
        self.assertEqual(envelope["sender"], SENDER)
        self.assertEqual(
            [r["address"] for r in envelope["recipients"]], list(RECIPIENTS)
        )

    async def test_unmodified(self) -> None:
        """
        Without modifications the message is posted as received, with
        C{quarantine} null.
        """
        reply, request, envelope = await self.post("nothing")
        self.assertEqual(reply.code, 250)
        self.assertEqual(request["body"], MESSAGE)
        self.assertIsNone(envelope["quarantine"])
        self.assertEqual(envelope["size"], len(MESSAGE))

    async def test_quarantine(self) -> None:
        """
        A quarantined message is posted as received, the reason in the
        envelope's C{quarantine}; the endpoint's answer is the reply.
        """
        reply, request, envelope = await self.post("quarantine")
        self.assertEqual(reply.code, 250)
        self.assertEqual(request["body"], MESSAGE)
        self.assertEqual(envelope["quarantine"], "looks like spam")
        self.assertTrue(request["verified"])

    async def test_twentyMegabytesModified(self) -> None:
        """
        A modified 20 MB message is rendered from spool file to spool file
        and posted from it: every byte arrives (same SHA-256), and the peak
        of Python memory allocated meanwhile stays far below its size.
        """
        self.endpoint.keep = False
        conn = self.connect("headers")
        head = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        chunk = (b"0123456789" * 7 + b"abcdefgh\r\n") * 800
        count = 20 * 1024 * 1024 // len(chunk)
        digest = hashlib.sha256(headersOnly(head))
        tracemalloc.start()
        try:
            conn.send(head)
            for _ in range(count):
                conn.send(chunk)
                digest.update(chunk)
            conn.send(b".\r\n")
            reply = await self.reply(conn)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(reply.code, 250)
        [request] = self.endpoint.requests
        self.assertEqual(request["sha256"], digest.hexdigest())
        self.assertTrue(request["verified"])
        size = len(headersOnly(head)) + count * len(chunk)
        self.assertEqual(request["size"], size)
        self.assertLess(peak, 8 * 1024 * 1024, f"peak {peak} for {size} bytes")
