"""
STARTTLS (RFC 3207) and implicit TLS (RFC 8314).

  - Unit tests over an in-memory transport that records C{startTLS} calls:
    when STARTTLS is offered and accepted, plaintext injection
    (CVE-2011-0411), the state reset after the handshake, the STARTTLS hook,
    --require-tls, REQUIRETLS (RFC 8689), and L{ServerTLS} loading and
    reloading files.
  - Real handshakes over 127.0.0.1 with an in-process server on the real
    reactor and Python's smtplib/ssl as client (in a thread): versions,
    client certificates, chains, injection over a socket, implicit TLS.
  - C{twistd esmtpkit} subprocesses: STARTTLS and implicit TLS with smtplib
    and swaks, --tls-min-version, --tls-client-ca, --require-tls, reload on
    SIGHUP without dropping connections, and start-up errors for bad files.

Certificates are generated for each run (L{tests.tlshelpers}).
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from esmtpkit import ESMTPFactory, ESMTPHandler
from esmtpkit.reply import Reply
from esmtpkit.security.auth import makePortal
from esmtpkit.security.scram import makeVerifier
from esmtpkit.security.tls import ServerTLS, TLSConfigurationError
from esmtpkit.server.endpoints import serverFromDescription

from .helpers import (
    LOOPBACK,
    TwistdServer,
    freePort,
    maildirFiles,
    runTwistd,
    splitReceived,
    tempDir,
    waitUntil,
)
from .tlshelpers import (
    PKI,
    FakeTLSHandle,
    RawClient,
    TLSTestConnection,
    clientContext,
    fingerprint,
    makePKI,
    memoryChecker,
    plain,
    sharedPKI,
    smtpLogin,
)

reactor: Any = _reactor

INJECTED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<a@b>\r\n"


class Store:
    """
    What the handlers of one test saw.
    """

    def __init__(self) -> None:
        self.ehlos: list[tuple[str, Any]] = []
        self.mails: list[dict[str, Any]] = []
        self.startTLSReply: Any = None
        self.startTLSCalls = 0
        self.disconnects = 0


class Recorder(ESMTPHandler):
    """
    Records EHLO (with the TLS state), MAIL (with params, TLS state and
    identity) and STARTTLS hook calls; the STARTTLS reply can be set.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def EHLO(self, domain: str) -> Any:
        self.store.ehlos.append((domain, self.session.tls))
        return super().EHLO(domain)

    def MAIL(self, sender: str, params: Any) -> Any:
        self.store.mails.append(
            {
                "sender": sender,
                "params": dict(params),
                "tls": self.session.tls,
                "authenticated": self.session.authenticated,
            }
        )
        return super().MAIL(sender, params)

    def DISCONNECT(self) -> None:
        self.store.disconnects += 1

    def STARTTLS(self) -> Any:
        self.store.startTLSCalls += 1
        if self.store.startTLSReply is not None:
            return self.store.startTLSReply
        return super().STARTTLS()


def serverTLS(pki: PKI | None = None, **kwargs: Any) -> ServerTLS:
    pki = pki or sharedPKI()
    return ServerTLS(str(pki.serverCert), str(pki.serverKey), **kwargs)


# ---------------------------------------------------------------------------
# Unit tests: STARTTLS over an in-memory transport
# ---------------------------------------------------------------------------


class StartTLSUnitTests(SynchronousTestCase):
    """
    STARTTLS without sockets: the transport records C{startTLS} and the
    handshake is simulated.
    """

    def setUp(self) -> None:
        self.store = Store()

    def connect(self, tls: bool = True, **settings: Any) -> TLSTestConnection:
        store = self.store
        return TLSTestConnection(
            lambda: Recorder(store), tls=serverTLS() if tls else None, **settings
        )

    def ehlo(self, conn: TLSTestConnection) -> Reply:
        reply = conn.command("EHLO client.example")
        self.assertEqual(reply.code, 250)
        return reply

    def test_offeredWithCertificates(self) -> None:
        """
        With certificates STARTTLS is advertised; STARTTLS gets 220 and then
        (after the reply is written) the transport starts TLS with the
        server's ServerTLS.
        """
        conn = self.connect()
        self.assertIn("STARTTLS", self.ehlo(conn).lines)
        reply = conn.command("STARTTLS")
        self.assertEqual(reply.code, 220)
        self.assertEqual(conn.transport.startTLSCalls, [conn.factory.tls])
        assert conn.transport.writtenBeforeTLS is not None
        self.assertTrue(
            conn.transport.writtenBeforeTLS.endswith(b"Ready to start TLS\r\n")
        )
        self.assertEqual(self.store.startTLSCalls, 1)

    def test_notOfferedWithoutCertificates(self) -> None:
        """
        Without certificates STARTTLS is not advertised and gets 502.
        """
        conn = self.connect(tls=False)
        self.assertNotIn("STARTTLS", self.ehlo(conn).lines)
        self.assertEqual(conn.command("STARTTLS").code, 502)
        self.assertEqual(conn.transport.startTLSCalls, [])

    def test_refusedOutOfSequence(self) -> None:
        """
        STARTTLS with an argument (501), before EHLO (503), after HELO only
        (503), or in a mail transaction (503) does not start TLS.
        """
        conn = self.connect()
        self.assertEqual(conn.command("STARTTLS").code, 503)
        conn.command("HELO client.example")
        self.assertEqual(conn.command("STARTTLS").code, 503)
        self.ehlo(conn)
        self.assertEqual(conn.command("STARTTLS now").code, 501)
        conn.command("MAIL FROM:<a@example.org>")
        self.assertEqual(conn.command("STARTTLS").code, 503)
        self.assertEqual(conn.transport.startTLSCalls, [])

    def test_notTwice(self) -> None:
        """
        Once TLS is on, STARTTLS is neither advertised nor accepted (503).
        """
        conn = self.connect()
        self.ehlo(conn)
        conn.starttls()
        self.assertNotIn("STARTTLS", self.ehlo(conn).lines)
        self.assertEqual(conn.command("STARTTLS").code, 503)
        self.assertEqual(len(conn.transport.startTLSCalls), 1)

    def _injection(self, payload: bytes, **settings: Any) -> TLSTestConnection:
        conn = self.connect(**settings)
        self.ehlo(conn)
        conn.send(b"STARTTLS\r\n" + payload)
        return conn

    def assertInjectionRefused(self, conn: TLSTestConnection) -> None:
        replies = conn.replies()
        self.assertEqual([r.code for r in replies], [554])
        self.assertEqual(replies[0].enhanced, "5.5.0")
        self.assertTrue(conn.closed)
        self.assertEqual(conn.transport.startTLSCalls, [])
        self.assertEqual(self.store.mails, [])
        # Even a handshake now (a confused transport) runs nothing.
        conn.send(b"EHLO client.example\r\n" + INJECTED)
        self.assertEqual(self.store.mails, [])

    def test_injectionRefused(self) -> None:
        """
        Commands pipelined after STARTTLS in the same read are never run:
        554 5.5.0, the connection closes, TLS is not started, the handler
        never sees the injected MAIL.
        """
        self.assertInjectionRefused(self._injection(INJECTED))

    def test_injectionRefusedWithoutEnforceSync(self) -> None:
        """
        With enforceSync off (pipelining checks relaxed), injection after
        STARTTLS is still refused.
        """
        self.assertInjectionRefused(self._injection(INJECTED, enforceSync=False))

    def test_injectionRefusedWithoutPipelining(self) -> None:
        """
        Also without PIPELINING and without enforceSync.
        """
        self.assertInjectionRefused(
            self._injection(INJECTED, enforceSync=False, pipelining=False)
        )

    def test_injectionPartialLine(self) -> None:
        """
        Even an incomplete line after STARTTLS is injection: it would
        complete after the handshake.
        """
        self.assertInjectionRefused(self._injection(b"MAIL FROM:<evil@x>"))

    def test_injectionSingleByte(self) -> None:
        """
        A single stray byte after STARTTLS is refused too.
        """
        self.assertInjectionRefused(self._injection(b"\r\n"))

    def test_stateReset(self) -> None:
        """
        After the handshake the HELO/EHLO state is gone: MAIL without a new
        EHLO gets 503, the session forgets the EHLO name, the new EHLO no
        longer lists STARTTLS and lists REQUIRETLS; then MAIL works.
        """
        conn = self.connect()
        self.ehlo(conn)
        self.assertEqual(conn.starttls().code, 220)
        self.assertIsNone(conn.session.heloName)
        self.assertFalse(conn.session.esmtp)
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 503)
        self.assertIsNone(conn.session.transaction)
        self.assertEqual(self.store.mails, [])
        lines = self.ehlo(conn).lines
        self.assertNotIn("STARTTLS", lines)
        self.assertIn("REQUIRETLS", lines)
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 250)

    def test_heloAfterTLSIsPlainSMTP(self) -> None:
        """
        HELO (not EHLO) after TLS: the session is not ESMTP any more, so
        ESMTP parameters are refused.
        """
        conn = self.connect()
        self.ehlo(conn)
        conn.starttls()
        conn.command("HELO client.example")
        self.assertFalse(conn.session.esmtp)
        self.assertEqual(conn.command("MAIL FROM:<a@example.org> REQUIRETLS").code, 555)

    def test_authResetByStartTLS(self) -> None:
        """
        An identity from plaintext AUTH (allowInsecureAuth) is forgotten by
        STARTTLS; AUTH is then possible again.
        """
        store = self.store
        conn = TLSTestConnection(
            lambda: Recorder(store),
            tls=serverTLS(),
            portal=makePortal([memoryChecker(alice="pw")]),
            allowInsecureAuth=True,
        )
        self.ehlo(conn)
        self.assertEqual(conn.command("AUTH PLAIN " + plain("alice", "pw")).code, 235)
        self.assertEqual(conn.session.authenticated, "alice")
        self.assertEqual(conn.starttls().code, 220)
        self.assertIsNone(conn.session.authenticated)
        self.ehlo(conn)
        conn.command("MAIL FROM:<a@example.org>")
        self.assertIsNone(self.store.mails[-1]["authenticated"])
        conn.command("RSET")
        self.assertEqual(conn.command("AUTH PLAIN " + plain("alice", "pw")).code, 235)

    def test_hookRefuses(self) -> None:
        """
        A STARTTLS hook answering 454 refuses the upgrade: the client gets
        454 4.7.0, TLS is not started, and the session goes on in plaintext
        with its EHLO state.
        """
        self.store.startTLSReply = (454, "4.7.0 TLS not available now")
        conn = self.connect()
        self.ehlo(conn)
        reply = conn.command("STARTTLS")
        self.assertEqual((reply.code, reply.enhanced), (454, "4.7.0"))
        self.assertEqual(reply.text, "TLS not available now")
        self.assertEqual(conn.transport.startTLSCalls, [])
        self.assertFalse(conn.closed)
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 250)
        self.assertIsNone(self.store.mails[0]["tls"])

    def test_hookAsync(self) -> None:
        """
        A STARTTLS hook may answer later: 220 and startTLS wait for it.
        """
        pending: Deferred[Any] = Deferred()
        self.store.startTLSReply = pending
        conn = self.connect()
        self.ehlo(conn)
        conn.send(b"STARTTLS\r\n")
        self.assertEqual(conn.replies(), [])
        self.assertEqual(conn.transport.startTLSCalls, [])
        pending.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [220])
        self.assertEqual(len(conn.transport.startTLSCalls), 1)

    def test_requireTLS(self) -> None:
        """
        requireTLS: MAIL before STARTTLS gets 530 5.7.0 (EHLO, NOOP, RSET
        are fine); after STARTTLS, MAIL works.
        """
        conn = self.connect(requireTLS=True)
        self.assertIn("STARTTLS", self.ehlo(conn).lines)
        self.assertEqual(conn.command("NOOP").code, 250)
        self.assertEqual(conn.command("RSET").code, 250)
        reply = conn.command("MAIL FROM:<a@example.org>")
        self.assertEqual((reply.code, reply.enhanced), (530, "5.7.0"))
        self.assertEqual(self.store.mails, [])
        conn.starttls()
        self.ehlo(conn)
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 250)

    def test_requiretlsOnlyUnderTLS(self) -> None:
        """
        REQUIRETLS: not advertised in plaintext, and MAIL ... REQUIRETLS
        there gets 530 5.7.10; under TLS it is advertised and the parameter
        reaches the handler (with no value); REQUIRETLS=x is a syntax error.
        """
        conn = self.connect()
        self.assertNotIn("REQUIRETLS", self.ehlo(conn).lines)
        reply = conn.command("MAIL FROM:<a@example.org> REQUIRETLS")
        self.assertEqual((reply.code, reply.enhanced), (530, "5.7.10"))
        self.assertEqual(self.store.mails, [])
        conn.starttls()
        self.assertIn("REQUIRETLS", self.ehlo(conn).lines)
        self.assertEqual(
            conn.command("MAIL FROM:<a@example.org> REQUIRETLS=yes").code, 501
        )
        self.assertEqual(conn.command("MAIL FROM:<a@example.org> REQUIRETLS").code, 250)
        self.assertEqual(self.store.mails[-1]["params"], {"REQUIRETLS": None})

    def test_sessionTLSInfo(self) -> None:
        """
        The handler sees no TLS state before the handshake, and the
        version and cipher after it.
        """
        conn = self.connect()
        self.ehlo(conn)
        self.assertIsNone(conn.session.tls)
        conn.starttls(FakeTLSHandle("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"))
        self.ehlo(conn)
        conn.command("MAIL FROM:<a@example.org>")
        tls = self.store.mails[0]["tls"]
        self.assertEqual(
            (tls.version, tls.cipher, tls.peerCertificate),
            ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", None),
        )
        self.assertEqual([t is None for _, t in self.store.ehlos], [True, False])


class ServerTLSTests(SynchronousTestCase):
    """
    L{ServerTLS}: loading files, refusing bad ones, reloading.
    """

    def setUp(self) -> None:
        self.pki = makePKI(tempDir(self) / "pki")
        self.dir = self.pki.directory

    def served(self, tls: ServerTLS) -> str:
        """
        The fingerprint of the certificate a new connection would get.
        """
        certificate = tls.serverConnectionForTLS(None).get_certificate()
        assert certificate is not None
        return fingerprint(certificate.to_cryptography())

    def test_loads(self) -> None:
        """
        A certificate and key load; new connections use the certificate.
        """
        tls = serverTLS(self.pki)
        self.assertEqual(self.served(tls), self.pki.fingerprintA)

    def test_keyInCertFile(self) -> None:
        """
        The key may be in the certificate file (keyPath omitted).
        """
        both = self.dir / "both.pem"
        both.write_bytes(
            self.pki.serverCert.read_bytes() + self.pki.serverKey.read_bytes()
        )
        self.assertEqual(self.served(ServerTLS(str(both))), self.pki.fingerprintA)

    def test_badFiles(self) -> None:
        """
        A missing file, a file that is not PEM, a key that does not match
        the certificate, or an unknown minimum version: TLSConfigurationError
        naming the file.
        """
        pki = self.pki
        cases = [
            (str(self.dir / "missing.pem"), str(pki.serverKey), "missing.pem"),
            (str(pki.serverCert), str(self.dir / "missing.key"), "missing.key"),
            (str(pki.garbage), str(pki.serverKey), "garbage.pem"),
            (str(pki.serverCert), str(pki.garbage), "garbage.pem"),
            (str(pki.serverCert), str(pki.otherKey), "other.key"),
        ]
        for cert, key, named in cases:
            with self.assertRaises(TLSConfigurationError) as caught:
                ServerTLS(cert, key)
            self.assertIn(named, str(caught.exception))
        with self.assertRaises(TLSConfigurationError):
            ServerTLS(str(pki.serverCert), str(pki.serverKey), minimumVersion="1.1")
        with self.assertRaises(TLSConfigurationError):
            ServerTLS(
                str(pki.serverCert), str(pki.serverKey), clientCAPath=str(pki.garbage)
            )

    def test_reloadKeepsOldOnError(self) -> None:
        """
        reload() with broken files (garbage, then a key that does not match)
        returns False and keeps serving the old certificate; with good new
        files it returns True and new connections get the new certificate.
        """
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        shutil.copy(self.pki.serverCert, cert)
        shutil.copy(self.pki.serverKey, key)
        tls = ServerTLS(str(cert), str(key))
        old = tls.serverConnectionForTLS(None)
        cert.write_bytes(b"garbage")
        self.assertFalse(tls.reload())
        self.assertEqual(self.served(tls), self.pki.fingerprintA)
        shutil.copy(self.pki.serverCertB, cert)  # key still A's
        self.assertFalse(tls.reload())
        self.assertEqual(self.served(tls), self.pki.fingerprintA)
        key.unlink()
        self.assertFalse(tls.reload())
        self.assertEqual(self.served(tls), self.pki.fingerprintA)
        shutil.copy(self.pki.serverKeyB, key)
        self.assertTrue(tls.reload())
        self.assertEqual(self.served(tls), self.pki.fingerprintB)
        # A connection made before the reload keeps its certificate.
        oldCertificate = old.get_certificate()
        assert oldCertificate is not None
        self.assertEqual(
            fingerprint(oldCertificate.to_cryptography()), self.pki.fingerprintA
        )


# ---------------------------------------------------------------------------
# Real handshakes over 127.0.0.1 with an in-process server
# ---------------------------------------------------------------------------


def _oldTLSClient(version: ssl.TLSVersion) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return clientContext(
            sharedPKI(),
            minimum=ssl.TLSVersion.TLSv1,
            maximum=version,
            lowSecurity=True,
        )


def _permissiveHandshake(client: ssl.SSLContext) -> str:
    """
    Control: the version C{client} negotiates with a plain OpenSSL server
    that accepts TLS 1.0 and later (so that a refusal elsewhere is not the
    client's doing).
    """
    pki = sharedPKI()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.load_cert_chain(str(pki.serverCert), str(pki.serverKey))
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def accept() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server.wrap_socket(conn, server_side=True):
                pass
        except BaseException as e:  # reported through the client side
            errors.append(e)

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as raw:
            with client.wrap_socket(raw, server_hostname="localhost") as tlsSock:
                version = tlsSock.version()
    finally:
        thread.join(15)
        listener.close()
    assert version is not None
    return version


class LoopbackTests(TestCase):
    """
    Real TLS handshakes with an in-process server (real reactor, 127.0.0.1)
    and Python's smtplib/ssl in a thread.
    """

    def setUp(self) -> None:
        self.store = Store()
        self.pki = sharedPKI()

    def serve(
        self,
        tls: ServerTLS | None = None,
        portal: Any = None,
        implicit: bool = False,
        handler: Any = None,
        **settings: Any,
    ) -> Deferred[int]:
        store = self.store
        factory = ESMTPFactory(
            handler or (lambda: Recorder(store)),
            tls=tls or serverTLS(),
            portal=portal,
            hostname="mx.example.test",
            **settings,
        )

        async def stop(port: Any) -> None:
            # Clients have closed; give the server a moment to see it, then
            # drop whatever is left (a test that hung has failed already).
            try:
                await waitUntil(lambda: not factory.connections, timeout=5)
            except AssertionError:
                for protocol in list(factory.connections):
                    protocol.transport.abortConnection()
                await waitUntil(lambda: not factory.connections, timeout=5)
            await port.stopListening()

        async def listen() -> int:
            if implicit:
                endpoint = serverFromDescription(
                    reactor, f"ssl:0:interface={LOOPBACK}", factory.tls
                )
                port = await endpoint.listen(factory)
            else:
                port = reactor.listenTCP(0, factory, interface=LOOPBACK)
            self.addCleanup(lambda: ensureDeferred(stop(port)))
            address: Any = port.getHost()
            return int(address.port)

        return ensureDeferred(listen())

    async def test_smtplibStartTLSLogin(self) -> None:
        """
        smtplib: STARTTLS with certificate verification (IP SAN), MAIL
        without a new EHLO gets 503, the new EHLO has no STARTTLS but
        REQUIRETLS and AUTH, login, MAIL with REQUIRETLS; the handler saw
        the version and cipher the client negotiated, and the identity.
        """
        port = await self.serve(portal=makePortal([memoryChecker(alice="pw-a")]))

        def client() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with smtplib.SMTP(LOOPBACK, port, timeout=10) as smtp:
                smtp.ehlo("client.example")
                out["authBefore"] = smtp.has_extn("auth")
                smtp.starttls(context=clientContext(self.pki))
                sock: Any = smtp.sock
                out["version"] = sock.version()
                out["cipher"] = sock.cipher()[0]
                out["mailNoEhlo"] = smtp.docmd("MAIL", "FROM:<a@example.org>")[0]
                smtp.ehlo("client.example")
                out["starttls"] = smtp.has_extn("starttls")
                out["requiretls"] = smtp.has_extn("requiretls")
                out["auth"] = smtp.esmtp_features.get("auth", "")
                out["login"] = smtp.login("alice", "pw-a")[0]
                out["mail"] = smtp.docmd("MAIL", "FROM:<a@example.org> REQUIRETLS")[0]
                out["rcpt"] = smtp.docmd("RCPT", "TO:<b@example.org>")[0]
            return out

        out = await deferToThread(client)
        self.assertFalse(out["authBefore"])
        self.assertEqual(out["mailNoEhlo"], 503)
        self.assertFalse(out["starttls"])
        self.assertTrue(out["requiretls"])
        self.assertIn("PLAIN", out["auth"])
        self.assertEqual((out["login"], out["mail"], out["rcpt"]), (235, 250, 250))
        mail = self.store.mails[-1]
        self.assertEqual(mail["tls"].version, out["version"])
        self.assertEqual(mail["tls"].cipher, out["cipher"])
        self.assertIsNone(mail["tls"].peerCertificate)
        self.assertEqual(mail["authenticated"], "alice")
        self.assertEqual(mail["params"], {"REQUIRETLS": None})
        self.assertEqual(len(self.store.mails), 1)  # the 503 MAIL never got there

    def _handshake(
        self, port: int, context: ssl.SSLContext
    ) -> Deferred[tuple[str | None, Reply | None, str | None]]:
        """
        In a thread: EHLO, STARTTLS, handshake, EHLO, NOOP. The result is
        the negotiated version (or None), the NOOP reply, and the error.
        """

        def client() -> tuple[str | None, Reply | None, str | None]:
            raw = RawClient(port)
            try:
                raw.replies(1)
                raw.command("EHLO client.example")
                raw.starttls(context)
                version = raw.sock.version()
                raw.command("EHLO client.example")
                return version, raw.command("NOOP"), None
            except (ssl.SSLError, OSError, EOFError) as e:
                return None, None, repr(e)
            finally:
                raw.close()

        return deferToThread(client)

    async def test_tls12ClientAccepted(self) -> None:
        """
        A TLS 1.2-only client is served by default, and the handler sees
        TLSv1.2.
        """
        port = await self.serve()
        context = clientContext(self.pki, maximum=ssl.TLSVersion.TLSv1_2)
        version, noop, error = await self._handshake(port, context)
        self.assertIsNone(error)
        self.assertEqual(version, "TLSv1.2")
        self.assertEqual(self.store.ehlos[-1][1].version, "TLSv1.2")

    async def test_oldTLSRefused(self) -> None:
        """
        TLS 1.2 is the default minimum: clients limited to TLS 1.1 or 1.0
        (which do complete a handshake with a permissive OpenSSL server, the
        control) fail, and the handler never sees a TLS EHLO.
        """
        port = await self.serve()
        for version, name in (
            (ssl.TLSVersion.TLSv1_1, "TLSv1.1"),
            (ssl.TLSVersion.TLSv1, "TLSv1"),
        ):
            context = _oldTLSClient(version)
            self.assertEqual(await deferToThread(_permissiveHandshake, context), name)
            negotiated, _, error = await self._handshake(port, context)
            self.assertIsNone(negotiated)
            self.assertIsNotNone(error)
        self.assertEqual([tls for _, tls in self.store.ehlos], [None, None])

    async def test_minimumTLS13(self) -> None:
        """
        minimumVersion "1.3" refuses a TLS 1.2-only client and serves a
        TLS 1.3 one.
        """
        port = await self.serve(tls=serverTLS(minimumVersion="1.3"))
        context = clientContext(self.pki, maximum=ssl.TLSVersion.TLSv1_2)
        negotiated, _, error = await self._handshake(port, context)
        self.assertIsNone(negotiated)
        self.assertIsNotNone(error)
        negotiated, noop, error = await self._handshake(port, clientContext(self.pki))
        self.assertIsNone(error)
        self.assertEqual(negotiated, "TLSv1.3")
        self.assertEqual(self.store.ehlos[-1][1].version, "TLSv1.3")

    async def test_clientCertificates(self) -> None:
        """
        With a client CA: a client certificate signed by it is shown to the
        handler (subject CN); no certificate still works (None); an
        untrusted or an expired certificate fails the handshake, and the
        handler never sees those sessions under TLS.
        """
        pki = self.pki
        tls = ServerTLS(
            str(pki.serverCert), str(pki.serverKey), clientCAPath=str(pki.caCert)
        )
        port = await self.serve(tls=tls)

        _, _, error = await self._handshake(
            port, clientContext(pki, cert=pki.clientCert, key=pki.clientKey)
        )
        self.assertIsNone(error)
        peer = self.store.ehlos[-1][1].peerCertificate
        self.assertIsNotNone(peer)
        self.assertIn("CN=client.example", peer.subject.rfc4514_string())

        _, _, error = await self._handshake(port, clientContext(pki))
        self.assertIsNone(error)
        self.assertIsNotNone(self.store.ehlos[-1][1])
        self.assertIsNone(self.store.ehlos[-1][1].peerCertificate)
        seen = len(self.store.ehlos)

        for cert, key in (
            (pki.untrustedClientCert, pki.untrustedClientKey),
            (pki.expiredClientCert, pki.expiredClientKey),
        ):
            _, noop, error = await self._handshake(
                port, clientContext(pki, cert=cert, key=key)
            )
            self.assertIsNotNone(error, f"{cert.name} was accepted")
            self.assertIsNone(noop)
        # Only the plaintext EHLOs of the refused sessions reached the handler.
        self.assertEqual([tls for _, tls in self.store.ehlos[seen:]], [None, None])
        # Each of the four sessions ended with exactly one DISCONNECT.
        await waitUntil(lambda: self.store.disconnects >= 4, timeout=10)
        self.assertEqual(self.store.disconnects, 4)

    async def test_certificateChain(self) -> None:
        """
        A certificate file with the chain (leaf, then intermediate) is sent
        whole: a client that trusts only the root verifies it.
        """
        pki = self.pki
        port = await self.serve(tls=ServerTLS(str(pki.chainCert), str(pki.chainKey)))
        version, noop, error = await self._handshake(port, clientContext(pki))
        self.assertIsNone(error)
        self.assertIsNotNone(version)

    async def _rawInjection(self, **settings: Any) -> tuple[bytes, bool]:
        port = await self.serve(**settings)

        def client() -> tuple[bytes, bool]:
            raw = RawClient(port)
            try:
                raw.replies(1)
                raw.command("EHLO client.example")
                raw.send(b"STARTTLS\r\n" + INJECTED)
                return raw.readUntilClosed()
            finally:
                raw.close()

        return await deferToThread(client)

    async def test_injectionOverSocket(self) -> None:
        """
        Over a real socket, commands sent in the same write as STARTTLS get
        554 5.5.0 and the connection is closed; no 220, and the handler
        never sees the MAIL.
        """
        data, closed = await self._rawInjection()
        self.assertTrue(closed)
        self.assertIn(b"554 5.5.0", data)
        self.assertNotIn(b"220 ", data)
        self.assertEqual(self.store.mails, [])

    async def test_injectionOverSocketWithoutEnforceSync(self) -> None:
        """
        The same with enforceSync off.
        """
        data, closed = await self._rawInjection(enforceSync=False)
        self.assertTrue(closed)
        self.assertIn(b"554 5.5.0", data)
        self.assertEqual(self.store.mails, [])

    async def test_hookRefusesOverSocket(self) -> None:
        """
        A STARTTLS hook answering 454: smtplib's starttls() fails with 454
        and the session goes on in plaintext (EHLO, MAIL).
        """
        self.store.startTLSReply = (454, "4.7.0 TLS not available now")
        port = await self.serve()

        def client() -> tuple[int, int, bool]:
            with smtplib.SMTP(LOOPBACK, port, timeout=10) as smtp:
                smtp.ehlo("client.example")
                try:
                    smtp.starttls(context=clientContext(self.pki))
                    code = 220
                except smtplib.SMTPResponseException as e:
                    code = e.smtp_code
                smtp.ehlo("client.example")
                return (
                    code,
                    smtp.docmd("MAIL", "FROM:<a@example.org>")[0],
                    (isinstance(smtp.sock, ssl.SSLSocket)),
                )

        code, mail, encrypted = await deferToThread(client)
        self.assertEqual((code, mail, encrypted), (454, 250, False))
        self.assertIsNone(self.store.mails[0]["tls"])

    async def test_implicitTLS(self) -> None:
        """
        An ssl: listener without privateKey= speaks TLS from the first byte
        with the server's certificate: SMTP_SSL verifies it, logs in and
        sends; the handler saw TLS from the first EHLO, and REQUIRETLS and
        AUTH are offered but not STARTTLS.
        """
        port = await self.serve(
            portal=makePortal([memoryChecker(alice="pw-a")]), implicit=True
        )

        def client() -> dict[str, Any]:
            with smtplib.SMTP_SSL(
                LOOPBACK, port, timeout=5, context=clientContext(self.pki)
            ) as smtp:
                smtp.ehlo("client.example")
                sock: Any = smtp.sock
                return {
                    "starttls": smtp.has_extn("starttls"),
                    "requiretls": smtp.has_extn("requiretls"),
                    "login": smtp.login("alice", "pw-a")[0],
                    "mail": smtp.docmd("MAIL", "FROM:<a@example.org>")[0],
                    "version": sock.version(),
                }

        out = await deferToThread(client)
        self.assertEqual((out["login"], out["mail"]), (235, 250))
        self.assertFalse(out["starttls"])
        self.assertTrue(out["requiretls"])
        self.assertEqual(self.store.ehlos[0][1].version, out["version"])
        self.assertEqual(self.store.mails[0]["authenticated"], "alice")


# ---------------------------------------------------------------------------
# twistd subprocesses
# ---------------------------------------------------------------------------


def _twistd(tmp_path: Path, port: int, *options: str) -> TwistdServer:
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
        *options,
    ]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return TwistdServer(args, cwd=tmp_path, port=port, env=env)


def _tlsOptions(pki: PKI) -> list[str]:
    return ["--tls-cert", str(pki.serverCert), "--tls-key", str(pki.serverKey)]


def _send(smtp: smtplib.SMTP, subject: str) -> None:
    smtp.sendmail(
        "a@example.org",
        ["b@example.org"],
        f"Subject: {subject}\r\n\r\nhello\r\n".encode(),
    )


def _swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--from", "a@example.org", "--to", "b@example.org", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _received(maildir: Path) -> list[bytes]:
    return [splitReceived(p.read_bytes())[0] for p in maildirFiles(maildir, "new")]


def test_twistdStartTLS(tmp_path: Path) -> None:
    """
    twistd with --tls-cert/--tls-key/--auth: smtplib starts TLS (verifying
    the certificate), logs in and sends; swaks does the same with -tls,
    --tls-verify and the test CA; both messages are delivered with ESMTPSA.
    """
    pki = sharedPKI()
    port = freePort()
    maildir = tmp_path / "mail"
    options = [
        *_tlsOptions(pki),
        "--auth",
        "memory:alice:Pw-alice-1",
        "--maildir",
        str(maildir),
    ]
    with _twistd(tmp_path, port, *options) as server:
        with smtplib.SMTP(LOOPBACK, port, timeout=10) as smtp:
            smtp.ehlo("client.example")
            assert not smtp.has_extn("auth")
            smtp.starttls(context=clientContext(pki))
            smtp.ehlo("client.example")
            assert smtp.login("alice", "Pw-alice-1")[0] == 235
            _send(smtp, "smtplib")
        result = _swaks(
            "--server",
            f"{LOOPBACK}:{port}",
            "-tls",
            "--tls-verify",
            "--tls-ca-path",
            str(pki.caCert),
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "Pw-alice-1",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "<~  235 " in result.stdout
        assert "TLS started" in result.stdout
        # Control: --tls-verify does verify (a CA that did not sign fails).
        otherCA = makePKI(tmp_path / "other").caCert
        result = _swaks(
            "--server",
            f"{LOOPBACK}:{port}",
            "-tls",
            "--tls-verify",
            "--tls-ca-path",
            str(otherCA),
        )
        assert result.returncode != 0
    received = _received(maildir)
    assert len(received) == 2
    for header in received:
        assert b" with ESMTPSA " in header
    assert "Traceback" not in server.output()


def test_twistdImplicitTLS(tmp_path: Path) -> None:
    """
    An ssl: listener in --port uses the --tls-cert/--tls-key files:
    smtplib.SMTP_SSL verifies, logs in and sends, and swaks
    --tls-on-connect sends too.
    """
    pki = sharedPKI()
    port, sslPort = freePort(), freePort()
    maildir = tmp_path / "mail"
    options = [
        "--port",
        f"ssl:{sslPort}:interface={LOOPBACK}",
        *_tlsOptions(pki),
        "--auth",
        "memory:alice:Pw-alice-1",
        "--maildir",
        str(maildir),
    ]
    with _twistd(tmp_path, port, *options):
        with smtplib.SMTP_SSL(
            LOOPBACK, sslPort, timeout=5, context=clientContext(pki)
        ) as smtp:
            smtp.ehlo("client.example")
            assert smtp.login("alice", "Pw-alice-1")[0] == 235
            _send(smtp, "implicit")
        result = _swaks(
            "--server",
            f"{LOOPBACK}:{sslPort}",
            "--tls-on-connect",
            "--tls-verify",
            "--tls-ca-path",
            str(pki.caCert),
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "Pw-alice-1",
        )
        assert result.returncode == 0, result.stdout + result.stderr
    received = _received(maildir)
    assert len(received) == 2
    for header in received:
        assert b" with ESMTPSA " in header


def _noop(raw: RawClient) -> dict[str, str]:
    reply = raw.command("NOOP")
    assert reply.code == 250, reply
    return dict(word.split("=", 1) for word in reply.text.split())


def test_twistdMinVersionClientCARequireTLS(tmp_path: Path) -> None:
    """
    twistd with --tls-min-version 1.3, --tls-client-ca and --require-tls:
    MAIL before STARTTLS gets 530 5.7.0; a TLS 1.2-only client fails; a
    TLS 1.3 client with a CA-signed certificate is seen by the handler
    (subject CN), one without a certificate is served (peer none), one
    with an untrusted certificate fails.
    """
    pki = sharedPKI()
    port = freePort()
    options = [
        *_tlsOptions(pki),
        "--tls-min-version",
        "1.3",
        "--tls-client-ca",
        str(pki.caCert),
        "--require-tls",
        "--handler",
        "tests.tlshelpers.TLSInfoHandler",
    ]

    def session(context: ssl.SSLContext) -> dict[str, str] | None:
        raw = RawClient(port)
        try:
            raw.replies(1)
            raw.command("EHLO client.example")
            mail = raw.command("MAIL FROM:<a@example.org>")
            assert (mail.code, mail.enhanced) == (530, "5.7.0"), mail
            raw.starttls(context)
            raw.command("EHLO client.example")
            info = _noop(raw)
            mail = raw.command("MAIL FROM:<a@example.org>")
            assert mail.code == 250, mail
            return info
        except (ssl.SSLError, OSError, EOFError):
            return None
        finally:
            raw.close()

    with _twistd(tmp_path, port, *options):
        assert session(clientContext(pki, maximum=ssl.TLSVersion.TLSv1_2)) is None
        info = session(clientContext(pki, cert=pki.clientCert, key=pki.clientKey))
        assert info is not None
        assert (info["tls"], info["peer"]) == ("TLSv1.3", "client.example")
        info = session(clientContext(pki))
        assert info is not None
        assert (info["tls"], info["peer"]) == ("TLSv1.3", "-")
        untrusted = clientContext(
            pki, cert=pki.untrustedClientCert, key=pki.untrustedClientKey
        )
        assert session(untrusted) is None


def _waitFor(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_twistdSIGHUPReload(tmp_path: Path) -> None:
    """
    SIGHUP reloads the certificate files without dropping connections: a
    broken file is refused (the old certificate stays, an error is
    logged); after new files and another SIGHUP, new connections get the
    new certificate (fingerprint) while a connection opened before, already
    under TLS, keeps working. The --auth scram-file: is reloaded as well.
    """
    pki = makePKI(tmp_path / "pki")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.serverCert, cert)
    shutil.copy(pki.serverKey, key)
    users = tmp_path / "scram-users"
    users.write_text(f"old:{makeVerifier('Old-Pw').toText()}\n")
    port = freePort()
    options = [
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--handler",
        "esmtpkit.handlers.Sink",
        "--auth",
        f"scram-file:{users}",
    ]
    context = clientContext(pki)

    def newFingerprint() -> str:
        raw = RawClient(port)
        try:
            raw.replies(1)
            raw.command("EHLO client.example")
            assert raw.starttls(context).code == 220
            return raw.peerFingerprint()
        finally:
            raw.close()

    with _twistd(tmp_path, port, *options) as server:
        assert server.process is not None
        old = RawClient(port)
        try:
            old.replies(1)
            old.command("EHLO client.example")
            assert old.starttls(context).code == 220
            assert old.peerFingerprint() == pki.fingerprintA
            assert old.command("EHLO client.example").code == 250

            cert.write_bytes(b"not a certificate\n")
            os.kill(server.process.pid, signal.SIGHUP)
            assert _waitFor(lambda: "not reloaded" in server.output()), server.output()
            shutil.copy(pki.serverCert, cert)  # the file is fine again, not reloaded
            assert newFingerprint() == pki.fingerprintA

            assert smtpLogin(port, "PLAIN", "new", "New-Pw", context=context)[0] == 535
            users.write_text(f"new:{makeVerifier('New-Pw').toText()}\n")
            shutil.copy(pki.serverKeyB, key)
            shutil.copy(pki.serverCertB, cert)
            os.kill(server.process.pid, signal.SIGHUP)
            assert _waitFor(lambda: newFingerprint() == pki.fingerprintB), (
                server.output()
            )
            assert server.process.poll() is None
            # The SCRAM file was read again too.
            login = smtpLogin(port, "SCRAM-SHA-256", "new", "New-Pw", context=context)
            assert login[0] == 235
            assert smtpLogin(port, "PLAIN", "old", "Old-Pw", context=context)[0] == 535

            assert old.command("NOOP").code == 250
            assert old.command("MAIL FROM:<a@example.org>").code == 250
            assert old.peerFingerprint() == pki.fingerprintA
            assert old.command("QUIT").code == 221
        finally:
            old.close()
    assert "Traceback" not in server.output()


def _badFileCases(pki: PKI, tmp: Path) -> list[tuple[list[str], str]]:
    return [
        (
            ["--tls-cert", str(tmp / "missing.pem"), "--tls-key", str(pki.serverKey)],
            "missing.pem",
        ),
        (
            ["--tls-cert", str(pki.serverCert), "--tls-key", str(tmp / "missing.key")],
            "missing.key",
        ),
        (
            ["--tls-cert", str(pki.serverCert), "--tls-key", str(pki.otherKey)],
            "other.key",
        ),
        (
            ["--tls-cert", str(pki.garbage), "--tls-key", str(pki.serverKey)],
            "garbage.pem",
        ),
        (
            ["--tls-cert", str(pki.serverCert), "--tls-key", str(pki.garbage)],
            "garbage.pem",
        ),
        ([*_tlsOptions(pki), "--tls-client-ca", str(pki.garbage)], "garbage.pem"),
        ([*_tlsOptions(pki), "--tls-min-version", "1.1"], "1.1"),
        (["--tls-key", str(pki.serverKey)], "--tls-key"),
        (["--require-tls"], "--require-tls"),
    ]


@pytest.mark.parametrize("index", range(9))
def test_twistdBadTLSStartup(tmp_path: Path, index: int) -> None:
    """
    Bad TLS options or files stop twistd at start-up: non-zero exit, no
    traceback, and one last line naming the problem (the file, value or
    option).
    """
    pki = sharedPKI()
    options, mentions = _badFileCases(pki, tmp_path)[index]
    result = runTwistd(
        [
            "-n",
            "--pidfile=",
            "esmtpkit",
            "--port",
            f"tcp:{freePort()}:interface={LOOPBACK}",
            *options,
        ],
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert mentions in lines[-1], f"{mentions!r} not in {lines[-1]!r}"
    # Said once (the usage text may name the option in its help lines).
    said = [line for line in lines if mentions in line and not line[:1].isspace()]
    assert said == [lines[-1]]
