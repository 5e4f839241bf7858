"""
The L{Webhook} handler against a real twisted.web server that each test
starts on 127.0.0.1 (port 0, read back) and stops: the request (message
body, envelope header, signature checked with L{verifySignature}), each
status mapping, a timeout, a refused connection, and a 50 MB message
whose delivery costs little memory (tracemalloc peak).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import tracemalloc
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from esmtpkit.handlers import Webhook
from esmtpkit.handlers.signature import signer
from esmtpkit.handlers.webhook import WebhookClient, verifySignature
from esmtpkit.server.startup import StartupError
from esmtpkit.server.tap import Options
from esmtpkit.testing import SMTPTestConnection, dotStuff

from .helpers import LOOPBACK, tempDir, waitUntil

reactor: Any = _reactor
SECRET = "s3cret-for-tests"
MESSAGE = b"From: a@example.org\r\nSubject: hook\r\n\r\nHello, endpoint.\r\n"


class Endpoint(Resource):
    """
    Records each POST (headers, body digest and size, whether the signature
    verifies) and answers with C{status} and C{text}, or never when
    C{hang}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.text = b"ok"
        self.hang = False
        self.keep = True
        self.hanging: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        content = request.content
        content.seek(0)
        digest = hashlib.sha256()
        size = 0
        kept = bytearray()
        while chunk := content.read(1 << 16):
            digest.update(chunk)
            size += len(chunk)
            if self.keep and len(kept) < 1 << 20:
                kept += chunk
        content.seek(0)
        signature = request.getHeader("X-Esmtpkit-Signature")
        envelope = request.getHeader("X-Esmtpkit-Envelope")
        self.requests.append(
            {
                "contentType": request.getHeader("Content-Type"),
                "signature": signature,
                "envelope": envelope,
                "size": size,
                "sha256": digest.hexdigest(),
                "body": bytes(kept),
                "verified": verifySignature(SECRET, signature, envelope, content),
            }
        )
        if self.hang:
            self.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return self.text


class WebhookTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.endpoint = Endpoint()
        self.port = reactor.listenTCP(0, Site(self.endpoint), interface=LOOPBACK)
        self.addCleanup(self.port.stopListening)
        self.url = f"http://{LOOPBACK}:{self.port.getHost().port}/hook"

    def client(self, url: str | None = None, **kw: Any) -> WebhookClient:
        client = WebhookClient(url or self.url, SECRET, **kw)
        self.addCleanup(client.close)
        return client

    def connect(self, client: WebhookClient, **kw: Any) -> SMTPTestConnection:
        conn = SMTPTestConnection(
            lambda: Webhook(client, **kw), maxMessageSize=64 * 1024 * 1024
        )
        conn.command("EHLO client.example")
        assert conn.command("MAIL FROM:<a@example.org> ENVID=abc").code == 250
        assert conn.command("RCPT TO:<b@example.net> NOTIFY=SUCCESS").code == 250
        assert conn.command("RCPT TO:<c@example.net>").code == 250
        return conn

    async def deliver(self, conn: SMTPTestConnection, message: bytes = MESSAGE) -> Any:
        assert conn.command("DATA").code == 354
        conn.send(dotStuff(message))
        return await self.reply(conn)

    async def reply(self, conn: SMTPTestConnection) -> Any:
        got: list[Any] = []

        def ready() -> bool:
            got.extend(conn.replies())
            return bool(got)

        await waitUntil(ready, timeout=60)
        [reply] = got
        return reply

    async def test_acceptedAndSigned(self) -> None:
        conn = self.connect(self.client())
        reply = await self.deliver(conn)
        self.assertEqual(reply.code, 250)
        self.assertEqual(
            reply.text, f"Message accepted for delivery as {conn.session.id}.1"
        )
        [request] = self.endpoint.requests
        self.assertEqual(request["contentType"], "message/rfc822")
        self.assertEqual(request["body"], MESSAGE)
        self.assertTrue(request["verified"])
        envelope = json.loads(request["envelope"])
        self.assertEqual(envelope["sender"], "a@example.org")
        self.assertEqual(envelope["mailParams"], {"ENVID": "abc"})
        self.assertEqual(
            envelope["recipients"],
            [
                {"address": "b@example.net", "params": {"NOTIFY": "SUCCESS"}},
                {"address": "c@example.net", "params": {}},
            ],
        )
        self.assertEqual(
            envelope["client"],
            {"address": "192.0.2.1", "port": 49152, "helo": "client.example"},
        )
        self.assertIsNone(envelope["tls"])
        self.assertIsNone(envelope["auth"])
        self.assertEqual(envelope["transaction"], conn.session.id + ".1")
        self.assertEqual(envelope["size"], len(MESSAGE))
        # Tampering with the envelope, the body or the time breaks it.
        signature, header = request["signature"], request["envelope"]
        self.assertFalse(
            verifySignature(SECRET, signature, header.replace("c@", "x@"), MESSAGE)
        )
        self.assertFalse(verifySignature(SECRET, signature, header, MESSAGE + b"x"))
        self.assertFalse(verifySignature("other", signature, header, MESSAGE))
        self.assertFalse(
            verifySignature(SECRET, signature, header, MESSAGE, now=time.time() + 301)
        )
        self.assertTrue(verifySignature(SECRET, signature, header, [MESSAGE]))

    async def test_internationalAddresses(self) -> None:
        """
        SMTPUTF8 addresses travel in the (ASCII) envelope header as JSON
        escapes, and come out the same; the signature still verifies.
        """
        conn = SMTPTestConnection(lambda: Webhook(self.client()))
        conn.command("EHLO client.example")
        self.assertEqual(
            conn.command("MAIL FROM:<jörg@exämple.org> SMTPUTF8").code, 250
        )
        self.assertEqual(conn.command("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>").code, 250)
        reply = await self.deliver(conn, "Subject: ü\r\n\r\nü\r\n".encode())
        self.assertEqual(reply.code, 250)
        [request] = self.endpoint.requests
        self.assertTrue(request["envelope"].isascii())
        envelope = json.loads(request["envelope"])
        self.assertEqual(envelope["sender"], "jörg@exämple.org")
        self.assertEqual(envelope["mailParams"], {"SMTPUTF8": None})
        self.assertEqual(
            envelope["recipients"][0]["address"], "δοκιμή@παράδειγμα.δοκιμή"
        )
        self.assertTrue(request["verified"])

    async def test_statusMapping(self) -> None:
        client = self.client()
        cases = [
            (204, b"", 250, None),
            (422, b"Unknown mailbox bob\n", 550, "Unknown mailbox bob"),
            (
                422,
                b"\x1b[31mred\x1b[0m",
                550,
                "Message refused by the endpoint (HTTP 422)",
            ),
            (422, b"x" * 500, 550, "Message refused by the endpoint (HTTP 422)"),
            (429, b"slow down", 451, None),
            (400, b"bad", 451, None),
            (404, b"", 451, None),
            (500, b"oops", 451, None),
            (503, b"", 451, None),
            (302, b"", 451, None),
        ]
        for status, text, code, shown in cases:
            self.endpoint.status, self.endpoint.text = status, text
            reply = await self.deliver(self.connect(client))
            self.assertEqual(reply.code, code, (status, reply))
            if code == 550:
                self.assertEqual((reply.enhanced, reply.text), ("5.7.1", shown))
            if code == 451:
                self.assertEqual(reply.enhanced, "4.3.0")
                self.assertIn(f"HTTP {status}", reply.text)

    async def test_rejectStatusOption(self) -> None:
        self.endpoint.status, self.endpoint.text = 406, b"Not for us"
        reply = await self.deliver(self.connect(self.client(rejectStatus=406)))
        self.assertEqual((reply.code, reply.text), (550, "Not for us"))

    async def test_timeout(self) -> None:
        self.endpoint.hang = True
        started = time.monotonic()
        reply = await self.deliver(self.connect(self.client(timeout=0.5)))
        self.assertEqual((reply.code, reply.enhanced), (451, "4.4.2"))
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(len(self.endpoint.hanging), 1)
        # The client gave up: the server sees the connection go.
        request = self.endpoint.hanging[0]
        await waitUntil(lambda: request._disconnected, timeout=10)

    async def test_connectionRefused(self) -> None:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            closed = s.getsockname()[1]
        client = self.client(f"http://{LOOPBACK}:{closed}/hook", timeout=5)
        reply = await self.deliver(self.connect(client))
        self.assertEqual((reply.code, reply.enhanced), (451, "4.4.1"))

    async def test_tooManyRecipients(self) -> None:
        conn = SMTPTestConnection(lambda: Webhook(self.client(), maxEnvelope=600))
        conn.command("EHLO c")
        conn.command("MAIL FROM:<a@example.org>")
        codes = [conn.command(f"RCPT TO:<r{i}@example.net>").code for i in range(10)]
        self.assertEqual(codes[0], 250)
        self.assertIn(452, codes)
        accepted = codes.index(452)
        self.assertEqual(codes[:accepted], [250] * accepted)
        reply = await self.deliver(conn)
        self.assertEqual(reply.code, 250)
        header = self.endpoint.requests[0]["envelope"]
        self.assertLessEqual(len(header), 600)
        self.assertEqual(len(json.loads(header)["recipients"]), accepted)

    async def test_abortedMessageIsNotPosted(self) -> None:
        conn = self.connect(self.client())
        conn.command("DATA")
        conn.send(b"Subject: half\r\n\r\npart of it")
        conn.protocol.connectionLost(None)
        await ensureDeferred(waitUntil(lambda: conn.handler._spool is None))
        self.assertEqual(self.endpoint.requests, [])

    async def test_fiftyMegabytes(self) -> None:
        """
        A 50 MB message goes through streamed: the endpoint gets every
        byte (same SHA-256), and the peak of memory allocated meanwhile
        (tracemalloc, the web server's side included) stays a small part
        of the message's size.
        """
        self.endpoint.keep = False
        conn = self.connect(self.client(timeout=60))
        line = b"0123456789" * 7 + b"abcdefgh\r\n"  # 80 bytes
        chunk = line * 800  # 64000 bytes
        count = 50 * 1024 * 1024 // len(chunk)
        header = b"Subject: big\r\n\r\n"
        digest = hashlib.sha256(header)
        self.assertEqual(conn.command("DATA").code, 354)
        tracemalloc.start()
        try:
            conn.send(header)
            for _ in range(count):
                conn.send(chunk)
                digest.update(chunk)
            conn.send(b".\r\n")
            reply = await self.reply(conn)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        size = len(header) + count * len(chunk)
        self.assertEqual(reply.code, 250)
        [request] = self.endpoint.requests
        self.assertEqual(request["size"], size)
        self.assertEqual(request["sha256"], digest.hexdigest())
        self.assertTrue(request["verified"])
        self.assertLess(peak, 8 * 1024 * 1024, f"peak {peak} for {size} bytes")


class OptionsTests(SynchronousTestCase):
    def parse(self, *pairs: str) -> Any:
        argv = ["--handler", "esmtpkit.handlers.Webhook"]
        for pair in pairs:
            argv += ["--handler-option", pair]
        options = Options()
        options.parseOptions([*argv, "--port", "tcp:0:interface=127.0.0.1"])
        return options

    def error(self, *pairs: str) -> str:
        with self.assertRaises(StartupError) as raised:
            self.parse(*pairs)
        return raised.exception.message

    def test_required(self) -> None:
        self.assertIn("url=... is required", self.error("secret=x"))
        self.assertIn("give one of secret", self.error("url=http://127.0.0.1/"))
        self.assertIn(
            "is not an http:// or https:// URL",
            self.error("url=ftp://x/", "secret=x"),
        )
        self.assertIn(
            "timeout: '0' is not a number above 0",
            self.error("url=http://127.0.0.1/", "secret=x", "timeout=0"),
        )

    def test_secretFile(self) -> None:
        path = str(tempDir(self) / "secret")
        with open(path, "w") as file:
            file.write("from-a-file\n")
        options = self.parse("url=https://hooks.example/in", f"secret-file={path}")
        handler = options["handlerFactory"]()
        self.addCleanup(handler.client.close)
        self.assertEqual(handler.client.secret, b"from-a-file")
        self.assertEqual(handler.client.timeout, 30.0)
        self.assertEqual(handler.client.rejectStatus, 422)
        self.assertIn(
            "secret-file", self.error("url=http://x/", "secret-file=/nonexistent")
        )


class VerifyTests(SynchronousTestCase):
    def sign(self, timestamp: int, envelope: str, body: bytes) -> str:
        mac = signer(SECRET, timestamp, envelope)
        mac.update(body)
        return f"t={timestamp},v1={mac.hexdigest()}"

    def test_verify(self) -> None:
        now = 1_700_000_000
        header = self.sign(now, "{}", b"body")
        self.assertTrue(verifySignature(SECRET, header, "{}", b"body", now=now))
        self.assertTrue(
            verifySignature(SECRET.encode(), header, b"{}", b"body", now=now + 299)
        )
        self.assertFalse(verifySignature(SECRET, header, "{}", b"body", now=now + 301))
        self.assertFalse(verifySignature(SECRET, header, "{}", b"body", now=now - 301))
        self.assertTrue(
            verifySignature(SECRET, header, "{}", b"body", maxAge=1000, now=now + 900)
        )
        rotated = f"t={now},v1={'0' * 64},{header.split(',')[1]}"
        self.assertTrue(verifySignature(SECRET, rotated, "{}", b"body", now=now))
        for bad in (None, "", "t=1", f"v1={'a' * 64}", "t=x,v1=00", header + "0"):
            self.assertFalse(verifySignature(SECRET, bad, "{}", b"body", now=now), bad)
        self.assertFalse(verifySignature(SECRET, header, None, b"body", now=now))


class HTTPSTests(TestCase):
    """
    An https:// endpoint (twisted.web over TLS on 127.0.0.1, a certificate
    of the test PKI for localhost): trusted through ca-file, refused
    (451 4.4.1, nothing delivered) without it.
    """

    timeout = 60

    def setUp(self) -> None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from esmtpkit.security.tls import ServerTLS

        from .tlshelpers import sharedPKI

        self.pki = sharedPKI()
        tls = ServerTLS(str(self.pki.serverCert), str(self.pki.serverKey))
        self.endpoint = Endpoint()
        factory = TLSMemoryBIOFactory(tls, False, Site(self.endpoint))
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        self.url = f"https://localhost:{port.getHost().port}/hook"

    async def send(self, client: WebhookClient) -> Any:
        self.addCleanup(client.close)
        conn = SMTPTestConnection(lambda: Webhook(client))
        conn.command("EHLO c")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        conn.command("DATA")
        conn.send(dotStuff(MESSAGE))
        got: list[Any] = []
        await waitUntil(lambda: bool(got.extend(conn.replies()) or got), timeout=30)
        return got[0]

    async def test_trustedByCAFile(self) -> None:
        client = WebhookClient(self.url, SECRET, caFile=str(self.pki.caCert))
        reply = await self.send(client)
        self.assertEqual(reply.code, 250)
        [request] = self.endpoint.requests
        self.assertTrue(request["verified"])
        self.assertEqual(request["body"], MESSAGE)

    async def test_untrustedCertificate(self) -> None:
        reply = await self.send(WebhookClient(self.url, SECRET, timeout=10))
        self.assertEqual((reply.code, reply.enhanced), (451, "4.4.1"))
        self.assertEqual(self.endpoint.requests, [])

    def test_badCAFile(self) -> None:
        with self.assertRaises(ValueError) as raised:
            WebhookClient(self.url, SECRET, caFile=str(self.pki.garbage))
        self.assertIn("no certificate in it", str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            WebhookClient(self.url, SECRET, caFile="/nonexistent/ca.pem")
        self.assertIn("No such file", str(raised.exception))


def test_webOnlyWhenAskedFor() -> None:
    """
    Importing esmtpkit.handlers and the twistd plugin's options brings
    neither treq nor twisted.web's client; asking for Webhook does.
    """
    import subprocess
    import sys

    code = (
        "import sys, esmtpkit.handlers as h, esmtpkit.server.tap;"
        "print('treq' in sys.modules, 'twisted.web.client' in sys.modules);"
        "h.Webhook;"
        "print('twisted.web.client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["False", "False", "True"], result
