"""
SMTP AUTH (RFC 4954) through twisted.cred: the mechanisms (PLAIN, LOGIN,
CRAM-MD5, SCRAM-SHA-256), their errors and reply codes, when AUTH is
offered, the per-session failure limit and its delay, credentials kept out
of the logs, the identity on the session, in the AUTH hook, in the
C{Received:} header and in C{MAIL ... AUTH=}, and C{twistd esmtpkit --auth}
with every kind of checker.

Unit tests run over an in-memory transport and a L{Clock}; the twistd tests
run a subprocess on 127.0.0.1 and stop it by its PID.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler
from esmtpkit.handlers import Maildir
from esmtpkit.reply import Reply
from esmtpkit.security.auth import makePortal
from esmtpkit.security.scram import ScramFileChecker, makeVerifier
from esmtpkit.security.tls import ServerTLS

from .helpers import (
    LOOPBACK,
    TwistdServer,
    freePort,
    maildirFiles,
    runTwistd,
    splitReceived,
    tempDir,
)
from .tlshelpers import (
    ScramSHA256Client,
    TLSTestConnection,
    b64,
    clientContext,
    memoryChecker,
    plain,
    sharedPKI,
    smtpLogin,
)

ALICE_PASSWORD = "Alice-Pw-7q2Zx"
SCRAM_PASSWORD = "Scram-Pw-9fK3w"


class Store:
    """
    What the handlers of one test saw.
    """

    def __init__(self) -> None:
        self.auths: list[Any] = []
        self.mails: list[dict[str, Any]] = []
        self.authReply: Any = None


class Recorder(ESMTPHandler):
    """
    Records AUTH hook calls and MAIL commands (with the session's identity).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def AUTH(self, identity: str) -> Any:
        self.store.auths.append(identity)
        if self.store.authReply is not None:
            return self.store.authReply
        return super().AUTH(identity)

    def MAIL(self, sender: str, params: Any) -> Any:
        self.store.mails.append(
            {
                "sender": sender,
                "params": dict(params),
                "authenticated": self.session.authenticated,
            }
        )
        return super().MAIL(sender, params)


class AuthTestCase(SynchronousTestCase):
    """
    Base: builds connections with a portal over a memory checker (alice)
    and, on request, a SCRAM file (scrammy).
    """

    def setUp(self) -> None:
        self.store = Store()
        self.dir = tempDir(self)
        self.scramPath = self.dir / "scram-users"
        self.scramPath.write_text(f"scrammy:{makeVerifier(SCRAM_PASSWORD).toText()}\n")
        self.tls = ServerTLS(str(sharedPKI().serverCert), str(sharedPKI().serverKey))

    def connect(
        self,
        checkers: list[Any] | None = None,
        *,
        scram: bool = False,
        handler: Any = None,
        **settings: Any,
    ) -> TLSTestConnection:
        if checkers is None:
            checkers = [memoryChecker(alice=ALICE_PASSWORD)]
            if scram:
                checkers.append(ScramFileChecker(str(self.scramPath)))
        settings.setdefault("logLevel", LogLevel.debug)
        # No failure delay unless a test asks for one (FailureLimitTests).
        settings.setdefault("errorDelay", 0)
        store = self.store
        return TLSTestConnection(
            handler or (lambda: Recorder(store)),
            tls=self.tls,
            portal=makePortal(checkers),
            **settings,
        )

    def insecure(self, **kwargs: Any) -> TLSTestConnection:
        """
        A plaintext connection with allowInsecureAuth, after EHLO.
        """
        conn = self.connect(allowInsecureAuth=True, **kwargs)
        self.assertEqual(conn.command("EHLO client.example").code, 250)
        return conn

    def secure(self, **kwargs: Any) -> TLSTestConnection:
        """
        A connection after STARTTLS (fake handshake) and a second EHLO.
        """
        conn = self.connect(**kwargs)
        self.assertEqual(conn.command("EHLO client.example").code, 250)
        self.assertEqual(conn.starttls().code, 220)
        self.assertEqual(conn.command("EHLO client.example").code, 250)
        return conn

    def assertCode(self, reply: Reply, code: int, enhanced: str | None = None) -> None:
        self.assertEqual(reply.code, code, reply)
        if enhanced is not None:
            self.assertEqual(reply.enhanced, enhanced, reply)


def _authKeyword(reply: Reply) -> list[str] | None:
    for line in reply.lines[1:]:
        if line.upper().startswith("AUTH "):
            return line.split()[1:]
        if line.upper() == "AUTH":
            return []
    return None


class MechanismTests(AuthTestCase):
    """
    The SASL mechanisms, with and without initial responses.
    """

    def test_plainInitialResponse(self) -> None:
        """
        AUTH PLAIN with an initial response: 235 2.7.0, the identity is on
        the session and was given to the AUTH hook.
        """
        conn = self.insecure()
        reply = conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
        self.assertCode(reply, 235, "2.7.0")
        self.assertEqual(conn.session.authenticated, "alice")
        self.assertEqual(self.store.auths, ["alice"])

    def test_plainWithoutInitialResponse(self) -> None:
        """
        AUTH PLAIN alone gets an empty 334 challenge; the response then logs
        in.
        """
        conn = self.insecure()
        reply = conn.command("AUTH PLAIN")
        self.assertEqual((reply.code, reply.text), (334, ""))
        self.assertIsNone(conn.session.authenticated)
        self.assertCode(conn.command(plain("alice", ALICE_PASSWORD)), 235, "2.7.0")
        self.assertEqual(conn.session.authenticated, "alice")

    def test_plainEmptyInitialResponse(self) -> None:
        """
        "=" is an empty initial response (RFC 4954 section 4), not a missing
        one: PLAIN gets no challenge and fails (an empty PLAIN message is
        malformed); LOGIN takes it as an empty user name and asks for the
        password.
        """
        conn = self.insecure()
        reply = conn.command("AUTH PLAIN =")
        self.assertNotEqual(reply.code, 334)
        self.assertIn(reply.code, (501, 535))
        self.assertIsNone(conn.session.authenticated)
        reply = conn.command("AUTH LOGIN =")
        self.assertEqual(reply.code, 334)
        self.assertEqual(base64.b64decode(reply.text), b"Password:")

    def test_plainAuthzidSameUser(self) -> None:
        """
        An authorization identity equal to the user is accepted.
        """
        conn = self.insecure()
        reply = conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD, "alice"))
        self.assertCode(reply, 235)
        self.assertEqual(conn.session.authenticated, "alice")

    def test_plainAuthzidOtherUserRefused(self) -> None:
        """
        Right credentials asking to act as another user do not authenticate
        as anybody.
        """
        conn = self.insecure()
        reply = conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD, "root"))
        self.assertIn(reply.code, (501, 535))
        self.assertIsNone(conn.session.authenticated)
        self.assertEqual(self.store.auths, [])

    def test_plainMalformed(self) -> None:
        """
        A PLAIN message without two NULs is refused with 501 5.5.2 (or 535),
        never accepted.
        """
        conn = self.insecure()
        reply = conn.command("AUTH PLAIN " + b64("alice" + ALICE_PASSWORD))
        self.assertIn(reply.code, (501, 535))
        self.assertIsNone(conn.session.authenticated)

    def testsmtpLogin(self) -> None:
        """
        AUTH LOGIN: "Username:" and "Password:" challenges, then 235.
        """
        conn = self.insecure()
        reply = conn.command("AUTH LOGIN")
        self.assertEqual(reply.code, 334)
        self.assertEqual(base64.b64decode(reply.text), b"Username:")
        reply = conn.command(b64("alice"))
        self.assertEqual(reply.code, 334)
        self.assertEqual(base64.b64decode(reply.text), b"Password:")
        self.assertCode(conn.command(b64(ALICE_PASSWORD)), 235, "2.7.0")
        self.assertEqual(conn.session.authenticated, "alice")

    def test_loginInitialResponse(self) -> None:
        """
        AUTH LOGIN with the user name as initial response asks only for the
        password.
        """
        conn = self.insecure()
        reply = conn.command("AUTH LOGIN " + b64("alice"))
        self.assertEqual(base64.b64decode(reply.text), b"Password:")
        self.assertCode(conn.command(b64(ALICE_PASSWORD)), 235)

    def test_loginWrongPassword(self) -> None:
        """
        AUTH LOGIN with a wrong password: 535 5.7.8.
        """
        conn = self.insecure()
        conn.command("AUTH LOGIN " + b64("alice"))
        self.assertCode(conn.command(b64("wrong")), 535, "5.7.8")
        self.assertIsNone(conn.session.authenticated)

    def test_cramMD5(self) -> None:
        """
        CRAM-MD5 (offered with a memory checker): the challenge is a
        msg-id-like string naming the server; the keyed MD5 of it logs in,
        a wrong key does not.
        """
        conn = self.insecure()
        ehlo = conn.command("EHLO client.example")
        self.assertIn("CRAM-MD5", _authKeyword(ehlo) or [])
        for password, code in (("wrong", 535), (ALICE_PASSWORD, 235)):
            reply = conn.command("AUTH CRAM-MD5")
            self.assertEqual(reply.code, 334)
            challenge = base64.b64decode(reply.text)
            self.assertTrue(challenge.startswith(b"<") and challenge.endswith(b">"))
            self.assertIn(b"@mx.example.test", challenge)
            digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
            self.assertCode(conn.command(b64(f"alice {digest}")), code)
        self.assertEqual(conn.session.authenticated, "alice")

    def test_cramMD5ChallengesDiffer(self) -> None:
        """
        Each CRAM-MD5 exchange gets a fresh challenge (a replayed response
        fails).
        """
        conn = self.insecure()
        first = base64.b64decode(conn.command("AUTH CRAM-MD5").text)
        digest = hmac.new(ALICE_PASSWORD.encode(), first, hashlib.md5).hexdigest()
        self.assertEqual(conn.command("*").code, 501)
        second = base64.b64decode(conn.command("AUTH CRAM-MD5").text)
        self.assertNotEqual(first, second)
        self.assertCode(conn.command(b64(f"alice {digest}")), 535)

    def test_cramMD5OnlyWhenCheckerSupportsIt(self) -> None:
        """
        With only a SCRAM file (salted verifiers) CRAM-MD5 is neither
        offered nor accepted (504), while SCRAM-SHA-256, PLAIN and LOGIN
        are.
        """
        checker = ScramFileChecker(str(self.scramPath))
        conn = self.connect([checker], allowInsecureAuth=True)
        mechanisms = _authKeyword(conn.command("EHLO client.example"))
        self.assertIsNotNone(mechanisms)
        assert mechanisms is not None
        self.assertNotIn("CRAM-MD5", mechanisms)
        self.assertEqual(
            sorted(mechanisms), sorted(["SCRAM-SHA-256", "PLAIN", "LOGIN"])
        )
        self.assertCode(conn.command("AUTH CRAM-MD5"), 504, "5.5.4")
        reply = conn.command("AUTH PLAIN " + plain("scrammy", SCRAM_PASSWORD))
        self.assertCode(reply, 235)

    def test_scramNotOfferedWithoutVerifiers(self) -> None:
        """
        A memory checker cannot give SCRAM verifiers: SCRAM-SHA-256 is not
        offered, and asking for it gets 504.
        """
        conn = self.connect(allowInsecureAuth=True)
        mechanisms = _authKeyword(conn.command("EHLO client.example"))
        assert mechanisms is not None
        self.assertEqual(sorted(mechanisms), sorted(["PLAIN", "LOGIN", "CRAM-MD5"]))
        self.assertCode(
            conn.command("AUTH SCRAM-SHA-256 " + b64("n,,n=alice,r=abcd")), 504
        )

    def _scram(
        self, conn: TLSTestConnection, user: str, password: str, initial: bool = True
    ) -> tuple[list[Reply], ScramSHA256Client]:
        client = ScramSHA256Client(user, password)
        replies = []
        if initial:
            reply = conn.command("AUTH SCRAM-SHA-256 " + b64(client.first()))
        else:
            reply = conn.command("AUTH SCRAM-SHA-256")
            replies.append(reply)
            self.assertEqual((reply.code, reply.text), (334, ""))
            reply = conn.command(b64(client.first()))
        replies.append(reply)
        if reply.code != 334:
            return replies, client
        reply = conn.command(b64(client.final(base64.b64decode(reply.text))))
        replies.append(reply)
        if reply.code != 334:
            return replies, client
        client.verify(base64.b64decode(reply.text))
        replies.append(conn.command(""))
        return replies, client

    def test_scram(self) -> None:
        """
        SCRAM-SHA-256 with the independent client: the server proves it
        knows the verifier (signature checked), then 235 and the identity.
        """
        conn = self.insecure(scram=True)
        replies, _ = self._scram(conn, "scrammy", SCRAM_PASSWORD)
        self.assertEqual([r.code for r in replies], [334, 334, 235])
        self.assertEqual(replies[-1].enhanced, "2.7.0")
        self.assertEqual(conn.session.authenticated, "scrammy")
        self.assertEqual(self.store.auths, ["scrammy"])

    def test_scramClientRejectsServer(self) -> None:
        """
        A client that cancels ("*") instead of acknowledging the server's
        final message (as it does when the signature is wrong) is not
        authenticated, and the AUTH hook is not called.
        """
        conn = self.insecure(scram=True)
        client = ScramSHA256Client("scrammy", SCRAM_PASSWORD)
        reply = conn.command("AUTH SCRAM-SHA-256 " + b64(client.first()))
        reply = conn.command(b64(client.final(base64.b64decode(reply.text))))
        self.assertEqual(reply.code, 334)
        self.assertTrue(base64.b64decode(reply.text).startswith(b"v="))
        self.assertEqual(conn.command("*").code, 501)
        self.assertIsNone(conn.session.authenticated)
        self.assertEqual(self.store.auths, [])
        self.assertCode(conn.command("MAIL FROM:<a@example.org>"), 250)
        self.assertIsNone(self.store.mails[-1]["authenticated"])

    def test_scramWithoutInitialResponse(self) -> None:
        """
        SCRAM-SHA-256 without an initial response starts with an empty 334.
        """
        conn = self.insecure(scram=True)
        replies, _ = self._scram(conn, "scrammy", SCRAM_PASSWORD, initial=False)
        self.assertEqual([r.code for r in replies], [334, 334, 334, 235])
        self.assertEqual(conn.session.authenticated, "scrammy")

    def test_scramWrongPassword(self) -> None:
        """
        A wrong SCRAM password: 535 5.7.8 after the client's proof, with no
        server signature sent.
        """
        conn = self.insecure(scram=True)
        replies, _ = self._scram(conn, "scrammy", "not-the-password")
        self.assertEqual([r.code for r in replies], [334, 535])
        self.assertEqual(replies[-1].enhanced, "5.7.8")
        self.assertIsNone(conn.session.authenticated)
        self.assertEqual(self.store.auths, [])

    def test_scramUnknownUserLikeWrongPassword(self) -> None:
        """
        An unknown user goes through the same steps with the same replies
        as a known user with a wrong password (no user enumeration): a
        server-first-message of the same shape, then the same 535.
        """
        conn = self.insecure(scram=True)
        known, _ = self._scram(conn, "scrammy", "bad-1")
        conn2 = self.insecure(scram=True)
        unknown, _ = self._scram(conn2, "nobody", "bad-1")
        self.assertEqual([r.code for r in known], [r.code for r in unknown])
        self.assertEqual(known[-1], unknown[-1])

        def shape(reply: Reply) -> tuple[Any, ...]:
            fields = dict(
                part.split("=", 1)
                for part in base64.b64decode(reply.text).decode().split(",")
            )
            return sorted(fields), fields["i"], len(base64.b64decode(fields["s"]))

        self.assertEqual(shape(known[0]), shape(unknown[0]))

    def test_plainUnknownUserLikeWrongPassword(self) -> None:
        """
        PLAIN and LOGIN: an unknown user and a wrong password get the same
        reply.
        """
        conn = self.insecure()
        wrong = conn.command("AUTH PLAIN " + plain("alice", "wrong"))
        conn2 = self.insecure()
        unknown = conn2.command("AUTH PLAIN " + plain("zed", "wrong"))
        self.assertCode(wrong, 535, "5.7.8")
        self.assertEqual(wrong, unknown)
        conn3 = self.insecure()
        conn3.command("AUTH LOGIN " + b64("zed"))
        self.assertEqual(conn3.command(b64("wrong")), wrong)

    def test_scramFromFileAndPlainFromMemory(self) -> None:
        """
        Several checkers: a memory user logs in with PLAIN and a SCRAM-file
        user with SCRAM-SHA-256 on the same server.
        """
        conn = self.insecure(scram=True)
        mechanisms = _authKeyword(conn.command("EHLO client.example")) or []
        self.assertIn("SCRAM-SHA-256", mechanisms)
        self.assertIn("PLAIN", mechanisms)
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), 235
        )
        conn2 = self.insecure(scram=True)
        replies, _ = self._scram(conn2, "scrammy", SCRAM_PASSWORD)
        self.assertEqual(replies[-1].code, 235)

    def test_severalCheckersSameInterface(self) -> None:
        """
        makePortal tries every checker of an interface: users of two memory
        checkers both log in, a user of neither does not.
        """
        checkers = [memoryChecker(ann="pw-ann"), memoryChecker(bob="pw-bob")]
        for user, password, code in (
            ("ann", "pw-ann", 235),
            ("bob", "pw-bob", 235),
            ("bob", "pw-ann", 535),
            ("cid", "pw-bob", 535),
        ):
            conn = self.connect(checkers, allowInsecureAuth=True)
            conn.command("EHLO client.example")
            self.assertCode(conn.command("AUTH PLAIN " + plain(user, password)), code)


class ErrorTests(AuthTestCase):
    """
    AUTH's error replies (RFC 4954 section 6).
    """

    def test_cancel(self) -> None:
        """
        "*" cancels an exchange with 501; the session goes on, and the
        client can authenticate afterwards.
        """
        conn = self.insecure(scram=True)
        self.assertEqual(conn.command("AUTH LOGIN").code, 334)
        self.assertCode(conn.command("*"), 501)
        self.assertIsNone(conn.session.authenticated)
        self.assertCode(conn.command("NOOP"), 250)
        client = ScramSHA256Client("scrammy", SCRAM_PASSWORD)
        self.assertEqual(
            conn.command("AUTH SCRAM-SHA-256 " + b64(client.first())).code, 334
        )
        self.assertCode(conn.command("*"), 501)
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), 235
        )

    def test_badBase64(self) -> None:
        """
        Undecodable base64, as initial response or as a later response:
        501 5.5.2.
        """
        conn = self.insecure()
        self.assertCode(conn.command("AUTH PLAIN %%%notbase64"), 501, "5.5.2")
        self.assertEqual(conn.command("AUTH LOGIN").code, 334)
        self.assertCode(conn.command("bm90=base64!"), 501, "5.5.2")
        self.assertIsNone(conn.session.authenticated)
        self.assertCode(conn.command("NOOP"), 250)

    def test_badCredentials(self) -> None:
        """
        Wrong credentials: 535 5.7.8, no identity, no AUTH hook call.
        """
        conn = self.insecure()
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", "guess")), 535, "5.7.8"
        )
        self.assertIsNone(conn.session.authenticated)
        self.assertEqual(self.store.auths, [])

    def test_encryptionRequired(self) -> None:
        """
        Without TLS and without allowInsecureAuth, AUTH is not advertised
        and gets 538 5.7.11, even with good credentials.
        """
        conn = self.connect()
        ehlo = conn.command("EHLO client.example")
        self.assertIsNone(_authKeyword(ehlo))
        self.assertIn("STARTTLS", ehlo.lines)
        reply = conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
        self.assertCode(reply, 538, "5.7.11")
        self.assertIsNone(conn.session.authenticated)

    def test_offeredUnderTLS(self) -> None:
        """
        After STARTTLS, AUTH is advertised and works without
        allowInsecureAuth.
        """
        conn = self.connect()
        conn.command("EHLO client.example")
        conn.starttls()
        mechanisms = _authKeyword(conn.command("EHLO client.example"))
        self.assertEqual(
            sorted(mechanisms or []), sorted(["PLAIN", "LOGIN", "CRAM-MD5"])
        )
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), 235
        )
        self.assertEqual(conn.session.authenticated, "alice")

    def test_offeredWithAllowInsecureAuth(self) -> None:
        """
        allowInsecureAuth advertises AUTH in plaintext.
        """
        conn = self.connect(allowInsecureAuth=True)
        self.assertIsNotNone(_authKeyword(conn.command("EHLO client.example")))

    def test_notOfferedWithoutPortal(self) -> None:
        """
        Without a portal there is no AUTH keyword and AUTH gets 503 (or
        502), never 235.
        """
        conn = TLSTestConnection(ESMTPHandler, allowInsecureAuth=True)
        self.assertIsNone(_authKeyword(conn.command("EHLO client.example")))
        reply = conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
        self.assertIn(reply.code, (502, 503))

    def test_requireTLS(self) -> None:
        """
        requireTLS: AUTH and MAIL before STARTTLS get 530 5.7.0 (even with
        allowInsecureAuth); after STARTTLS both work.
        """
        conn = self.connect(requireTLS=True, allowInsecureAuth=True)
        conn.command("EHLO client.example")
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), 530, "5.7.0"
        )
        self.assertCode(conn.command("MAIL FROM:<a@example.org>"), 530, "5.7.0")
        self.assertIsNone(conn.session.authenticated)
        self.assertEqual(conn.starttls().code, 220)
        conn.command("EHLO client.example")
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), 235
        )
        self.assertCode(conn.command("MAIL FROM:<a@example.org>"), 250)

    def test_alreadyAuthenticated(self) -> None:
        """
        A second AUTH after success: 503, and the identity stays.
        """
        conn = self.insecure()
        conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
        self.assertCode(conn.command("AUTH LOGIN"), 503)
        self.assertEqual(conn.session.authenticated, "alice")

    def test_unknownMechanism(self) -> None:
        """
        An unknown mechanism: 504 5.5.4.
        """
        conn = self.insecure()
        self.assertCode(conn.command("AUTH GSSAPI"), 504, "5.5.4")
        self.assertCode(conn.command("AUTH X-NOPE " + b64("x")), 504, "5.5.4")

    def test_mechanismCaseInsensitive(self) -> None:
        """
        Mechanism names are case-insensitive.
        """
        conn = self.insecure()
        self.assertCode(
            conn.command("auth plain " + plain("alice", ALICE_PASSWORD)), 235
        )

    def test_authBeforeEhlo(self) -> None:
        """
        AUTH before EHLO (or after HELO only): 503, not authenticated.
        """
        conn = self.connect(allowInsecureAuth=True)
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), 503
        )
        conn.command("HELO client.example")
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), 503
        )
        self.assertIsNone(conn.session.authenticated)

    def test_authInTransaction(self) -> None:
        """
        AUTH during a mail transaction: 503.
        """
        conn = self.insecure()
        conn.command("MAIL FROM:<a@example.org>")
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), 503
        )
        self.assertIsNone(conn.session.authenticated)

    def test_requireAuth(self) -> None:
        """
        requireAuth: MAIL before AUTH gets 530 5.7.0; after AUTH it works.
        """
        conn = self.insecure(requireAuth=True)
        self.assertCode(conn.command("MAIL FROM:<a@example.org>"), 530, "5.7.0")
        self.assertEqual(self.store.mails, [])
        conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
        self.assertCode(conn.command("MAIL FROM:<a@example.org>"), 250)
        self.assertEqual(self.store.mails[0]["authenticated"], "alice")

    def test_saslResponseIsNotACommand(self) -> None:
        """
        During an exchange, a line that looks like a command is SASL data:
        "QUIT" (valid base64) is taken as the LOGIN user name, and
        "MAIL FROM:<...>" (not base64) gets 501 5.5.2; neither is run.
        """
        conn = self.insecure()
        conn.command("AUTH LOGIN")
        reply = conn.command("QUIT")
        self.assertEqual(reply.code, 334)
        self.assertEqual(base64.b64decode(reply.text), b"Password:")
        self.assertFalse(conn.closed)
        self.assertCode(conn.command("MAIL FROM:<x@example.org>"), 501, "5.5.2")
        self.assertEqual(self.store.mails, [])
        self.assertIsNone(conn.session.transaction)


class FailureLimitTests(AuthTestCase):
    """
    Failed AUTH attempts are limited per session, with a growing delay.
    """

    def failOnce(self, conn: TLSTestConnection) -> list[Reply]:
        conn.send(b"AUTH PLAIN " + plain("alice", "wrong").encode() + b"\r\n")
        return conn.replies()

    def test_delayThenDisconnect(self) -> None:
        """
        After a failure the next command is answered only once the delay
        (errorDelay times the number of failures) has passed on the clock;
        the third failure gets 535 then 421 4.7.0 and the connection closes.
        """
        conn = self.insecure(errorDelay=1.0)
        for failures in (1, 2):
            replies = self.failOnce(conn)
            self.assertEqual([r.code for r in replies], [535])
            conn.send(b"NOOP\r\n")
            self.assertEqual(conn.replies(), [])
            conn.clock.advance(failures * 1.0 - 0.01)
            self.assertEqual(conn.replies(), [])
            conn.clock.advance(0.02)
            self.assertEqual([r.code for r in conn.replies()], [250])
            self.assertFalse(conn.closed)
        replies = self.failOnce(conn)
        self.assertEqual([r.code for r in replies], [535, 421])
        self.assertEqual(replies[1].enhanced, "4.7.0")
        self.assertTrue(conn.closed)

    def test_customLimit(self) -> None:
        """
        maxAuthFailures=1 closes after the first failure.
        """
        conn = self.insecure(maxAuthFailures=1)
        replies = self.failOnce(conn)
        self.assertEqual([r.code for r in replies], [535, 421])
        self.assertTrue(conn.closed)

    def test_noLimit(self) -> None:
        """
        maxAuthFailures=0: any number of failures, no 421.
        """
        conn = self.insecure(maxAuthFailures=0, errorDelay=0)
        for _ in range(5):
            self.assertEqual([r.code for r in self.failOnce(conn)], [535])
        self.assertFalse(conn.closed)

    def test_otherFailuresCount(self) -> None:
        """
        Malformed responses and SCRAM failures count too.
        """
        conn = self.insecure(scram=True, errorDelay=0)
        conn.command("AUTH PLAIN " + b64("no-nuls-here"))
        client = ScramSHA256Client("scrammy", "wrong")
        reply = conn.command("AUTH SCRAM-SHA-256 " + b64(client.first()))
        conn.send(b64(client.final(base64.b64decode(reply.text))).encode() + b"\r\n")
        self.assertEqual([r.code for r in conn.replies()], [535])
        self.assertEqual([r.code for r in self.failOnce(conn)], [535, 421])
        self.assertTrue(conn.closed)

    def test_successDoesNotNeedDelayToPass(self) -> None:
        """
        A correct login right after connecting is answered at once (no
        delay without a failure).
        """
        conn = self.insecure()
        self.assertCode(
            conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), 235
        )

    def test_limitSurvivesSTARTTLS(self) -> None:
        """
        The limit is per session: failures before STARTTLS still count
        after it (STARTTLS must not buy a fresh set of guesses).
        """
        conn = self.connect(allowInsecureAuth=True, errorDelay=0)
        conn.command("EHLO client.example")
        self.assertEqual([r.code for r in self.failOnce(conn)], [535])
        self.assertEqual([r.code for r in self.failOnce(conn)], [535])
        self.assertEqual(conn.starttls().code, 220)
        conn.command("EHLO client.example")
        self.assertEqual([r.code for r in self.failOnce(conn)], [535, 421])
        self.assertTrue(conn.closed)


class IdentityTests(AuthTestCase):
    """
    The authenticated identity: AUTH hook, refusal, Received: header,
    MAIL AUTH= parameter.
    """

    def test_hookRefuses(self) -> None:
        """
        An AUTH hook answering 535 refuses good credentials: the client gets
        that reply, the session has no identity, and the refusal counts as a
        failure.
        """
        self.store.authReply = (535, "5.7.8 Not from here")
        conn = self.insecure(errorDelay=0)
        for expected in ([535], [535], [535, 421]):
            conn.send(
                b"AUTH PLAIN " + plain("alice", ALICE_PASSWORD).encode() + b"\r\n"
            )
            replies = conn.replies()
            self.assertEqual([r.code for r in replies], expected)
            self.assertEqual(replies[0].text, "Not from here")
            self.assertIsNone(conn.session.authenticated)
        self.assertEqual(self.store.auths, ["alice"] * 3)
        self.assertTrue(conn.closed)

    def test_hookAsync(self) -> None:
        """
        An AUTH hook may answer later (a Deferred): the reply and the
        identity wait for it.
        """
        pending: Deferred[Any] = Deferred()
        self.store.authReply = pending
        conn = self.insecure()
        conn.send(b"AUTH PLAIN " + plain("alice", ALICE_PASSWORD).encode() + b"\r\n")
        self.assertEqual(conn.replies(), [])
        self.assertIsNone(conn.session.authenticated)
        pending.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [235])
        self.assertEqual(conn.session.authenticated, "alice")

    def _deliver(self, conn: TLSTestConnection, maildir: Path) -> bytes:
        self.assertCode(conn.command("MAIL FROM:<a@example.org>"), 250)
        self.assertCode(conn.command("RCPT TO:<b@example.org>"), 250)
        self.assertCode(conn.sendMessage(b"Subject: t\r\n\r\nbody\r\n"), 250)
        files = maildirFiles(maildir, "new")
        self.assertEqual(len(files), 1)
        received, _ = splitReceived(files[0].read_bytes())
        return received

    def _maildirConnect(self, maildir: Path, **settings: Any) -> TLSTestConnection:
        return self.connect(
            handler=lambda: Maildir(str(maildir), fsync=False), **settings
        )

    def test_receivedESMTPA(self) -> None:
        """
        AUTH without TLS (allowInsecureAuth): Received: says ESMTPA.
        """
        maildir = self.dir / "a"
        conn = self._maildirConnect(maildir, allowInsecureAuth=True)
        conn.command("EHLO client.example")
        conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
        self.assertIn(b" with ESMTPA ", self._deliver(conn, maildir))

    def test_receivedESMTPS(self) -> None:
        """
        TLS without AUTH: Received: says ESMTPS.
        """
        maildir = self.dir / "s"
        conn = self._maildirConnect(maildir)
        conn.command("EHLO client.example")
        conn.starttls()
        conn.command("EHLO client.example")
        self.assertIn(b" with ESMTPS ", self._deliver(conn, maildir))

    def test_receivedESMTPSA(self) -> None:
        """
        STARTTLS and AUTH: Received: says ESMTPSA.
        """
        maildir = self.dir / "sa"
        conn = self._maildirConnect(maildir)
        conn.command("EHLO client.example")
        conn.starttls()
        conn.command("EHLO client.example")
        conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
        self.assertIn(b" with ESMTPSA ", self._deliver(conn, maildir))

    def test_receivedPlainESMTP(self) -> None:
        """
        Neither TLS nor AUTH: Received: says plain ESMTP.
        """
        maildir = self.dir / "p"
        conn = self._maildirConnect(maildir)
        conn.command("EHLO client.example")
        self.assertIn(b" with ESMTP ", self._deliver(conn, maildir))

    def test_mailAuthParameter(self) -> None:
        """
        MAIL FROM AUTH=<> and AUTH=xtext reach the handler decoded.
        """
        conn = self.insecure()
        conn.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
        self.assertCode(conn.command("MAIL FROM:<a@example.org> AUTH=<>"), 250)
        conn.command("RSET")
        self.assertCode(conn.command("MAIL FROM:<a@example.org> AUTH=a+40b.c"), 250)
        self.assertEqual(
            [m["params"] for m in self.store.mails], [{"AUTH": "<>"}, {"AUTH": "a@b.c"}]
        )

    def test_mailAuthParameterUnauthenticated(self) -> None:
        """
        RFC 4954 section 5: from a client that has not authenticated, the
        server behaves as if AUTH=<> was given, whatever mailbox it claims.
        """
        conn = self.insecure()
        self.assertCode(conn.command("MAIL FROM:<a@example.org> AUTH=a+40b.c"), 250)
        self.assertEqual(self.store.mails[0]["params"], {"AUTH": "<>"})

    def test_mailAuthParameterBadXtext(self) -> None:
        """
        An AUTH= value that is not xtext is a syntax error (501).
        """
        conn = self.insecure()
        self.assertEqual(conn.command("MAIL FROM:<a@example.org> AUTH=a+4").code, 501)
        self.assertEqual(self.store.mails, [])

    def test_mailAuthParameterWithoutAuth(self) -> None:
        """
        Where AUTH is not offered, AUTH= is an unknown parameter (the
        default handler refuses it with 555).
        """
        conn = TLSTestConnection(ESMTPHandler)
        conn.command("EHLO client.example")
        self.assertEqual(conn.command("MAIL FROM:<a@example.org> AUTH=<>").code, 555)


class LogTests(AuthTestCase):
    """
    Credentials never appear in log events (at debug level), and the user
    name only in the success line.
    """

    def _text(self, conn: TLSTestConnection) -> list[str]:
        lines = []
        for event in conn.log.events:
            lines.append((formatEvent(event) or "") + " " + repr(event))
        return lines

    def assertClean(
        self, conn: TLSTestConnection, secrets: list[str], user: str
    ) -> None:
        lines = self._text(conn)
        self.assertTrue(lines)
        for line in lines:
            for secret in secrets:
                self.assertNotIn(secret, line)
        withUser = [line for line in lines if user in line]
        for line in withUser:
            self.assertIn("authenticated as", line)

    def test_plainAndLogin(self) -> None:
        """
        PLAIN and LOGIN, failed and successful: no password, no base64 form
        of anything the client sent, and the user name only in the success
        line.
        """
        conn = self.insecure(errorDelay=0)
        sent = []
        for line in (
            "AUTH PLAIN " + plain("alice", "Wrong-Pw-3x9"),
            "AUTH LOGIN " + b64("alice"),
            b64("Wrong-Pw-4y8"),
            "AUTH PLAIN " + plain("alice", ALICE_PASSWORD),
        ):
            conn.command(line)
            sent.append(line.split()[-1])
        self.assertEqual(conn.session.authenticated, "alice")
        secrets = [ALICE_PASSWORD, "Wrong-Pw-3x9", "Wrong-Pw-4y8", b64(ALICE_PASSWORD)]
        self.assertClean(conn, secrets + sent, "alice")
        self.assertTrue(any("authenticated as" in line for line in self._text(conn)))

    def test_scramAndCram(self) -> None:
        """
        SCRAM-SHA-256 and CRAM-MD5 exchanges leave no client message, proof
        or password in the log.
        """
        conn = self.insecure(scram=True, errorDelay=0)
        client = ScramSHA256Client("scrammy", SCRAM_PASSWORD)
        first = b64(client.first())
        reply = conn.command("AUTH SCRAM-SHA-256 " + first)
        final = b64(client.final(base64.b64decode(reply.text)))
        reply = conn.command(final)
        client.verify(base64.b64decode(reply.text))
        self.assertEqual(conn.command("").code, 235)
        conn2 = self.insecure(errorDelay=0)
        challenge = base64.b64decode(conn2.command("AUTH CRAM-MD5").text)
        digest = hmac.new(ALICE_PASSWORD.encode(), challenge, hashlib.md5).hexdigest()
        self.assertEqual(conn2.command(b64(f"alice {digest}")).code, 235)
        self.assertClean(conn, [SCRAM_PASSWORD, first, final, reply.text], "scrammy")
        self.assertClean(conn2, [ALICE_PASSWORD, digest], "alice")

    def test_failedUserNameNotLogged(self) -> None:
        """
        A failed login does not log the user name it tried.
        """
        conn = self.insecure(errorDelay=0)
        conn.command("AUTH PLAIN " + plain("mallory-xyz", "pw"))
        for line in self._text(conn):
            self.assertNotIn("mallory-xyz", line)


# -- twistd --auth -------------------------------------------------------------


def _scramLine(user: str, password: str) -> str:
    root = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-m", "esmtpkit", "scram", user],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        env={**__import__("os").environ, "PYTHONPATH": root},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


FILE_PASSWORD = "File-Pw-8hQ2v"
MEMO_PASSWORD = "Memo-Pw-5tR1u"
TWISTD_SCRAM_PASSWORD = "Scram-Pw-6wE4i"


def test_twistdAuthCheckers(tmp_path: Path) -> None:
    """
    twistd with --auth file:, memory: and scram-file: together (and TLS):
    a user of each logs in (PLAIN, LOGIN, CRAM-MD5 chosen by smtplib,
    SCRAM-SHA-256 with the server signature checked), wrong passwords get
    535, an authenticated message is delivered with ESMTPSA, and at
    --log-level debug no password or base64 form of one appears in the
    output.
    """
    pki = sharedPKI()
    passwd = tmp_path / "passwd"
    passwd.write_text(f"filer:{FILE_PASSWORD}\n")
    scramFile = tmp_path / "scram"
    scramFile.write_text(_scramLine("scrammy", TWISTD_SCRAM_PASSWORD) + "\n")
    port = freePort()
    maildir = tmp_path / "mail"
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
        "--tls-cert",
        str(pki.serverCert),
        "--tls-key",
        str(pki.serverKey),
        "--auth",
        f"file:{passwd}",
        "--auth",
        f"memory:memo:{MEMO_PASSWORD}",
        "--auth",
        f"scram-file:{scramFile}",
        "--maildir",
        str(maildir),
        "--log-level",
        "debug",
        "--max-auth-failures",
        "0",
        "--error-delay",
        "0",
    ]
    with TwistdServer(args, cwd=tmp_path, port=port) as server:
        assert smtpLogin(port, "PLAIN", "filer", FILE_PASSWORD)[0] == 235
        assert smtpLogin(port, "LOGIN", "filer", FILE_PASSWORD)[0] == 235
        assert smtpLogin(port, "AUTO", "memo", MEMO_PASSWORD)[0] == 235  # CRAM-MD5
        assert smtpLogin(port, "PLAIN", "memo", MEMO_PASSWORD)[0] == 235
        assert (
            smtpLogin(port, "SCRAM-SHA-256", "scrammy", TWISTD_SCRAM_PASSWORD)[0] == 235
        )
        assert smtpLogin(port, "PLAIN", "scrammy", TWISTD_SCRAM_PASSWORD)[0] == 235
        assert smtpLogin(port, "PLAIN", "filer", "Bad-Pw-1aA")[0] == 535
        assert smtpLogin(port, "LOGIN", "memo", "Bad-Pw-2bB")[0] == 535
        assert smtpLogin(port, "SCRAM-SHA-256", "scrammy", "Bad-Pw-3cC")[0] == 535
        assert smtpLogin(port, "PLAIN", "nobody-zz", "Bad-Pw-4dD")[0] == 535

        context = clientContext(pki)
        with smtplib.SMTP(LOOPBACK, port, timeout=10) as smtp:
            smtp.starttls(context=context)
            smtp.login("filer", FILE_PASSWORD)
            smtp.sendmail(
                "a@example.org", ["b@example.org"], b"Subject: auth\r\n\r\nhi\r\n"
            )
        files = maildirFiles(maildir, "new")
        assert len(files) == 1
        received, _ = splitReceived(files[0].read_bytes())
        assert b" with ESMTPSA " in received
    output = server.output()
    assert "Traceback" not in output
    assert "authenticated as" in output
    assert "AUTH -> 535" in output  # the debug lines were on
    for secret in (
        FILE_PASSWORD,
        MEMO_PASSWORD,
        TWISTD_SCRAM_PASSWORD,
        "Bad-Pw-1aA",
        "Bad-Pw-2bB",
        "Bad-Pw-3cC",
        "Bad-Pw-4dD",
    ):
        for form in (
            secret,
            b64(secret),
            plain("filer", secret),
            plain("memo", secret),
        ):
            assert form not in output, f"{form!r} appears in the log"
    for line in output.splitlines():
        if "nobody-zz" in line:
            raise AssertionError(f"failed user name logged: {line}")


def test_twistdAuthUserFromEachChecker(tmp_path: Path) -> None:
    """
    Two --auth memory: options and a file: option: every user logs in, a
    password of one user does not work for another.
    """
    passwd = tmp_path / "passwd"
    passwd.write_text("carol:Carol-Pw\n")
    port = freePort()
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
        "--handler",
        "esmtpkit.handlers.Sink",
        "--tls-cert",
        str(sharedPKI().serverCert),
        "--tls-key",
        str(sharedPKI().serverKey),
        "--auth",
        "memory:ann:Ann-Pw",
        "--auth",
        "memory:bob:Bob-Pw",
        "--auth",
        f"file:{passwd}",
    ]
    with TwistdServer(args, cwd=tmp_path, port=port):
        assert smtpLogin(port, "PLAIN", "ann", "Ann-Pw")[0] == 235
        assert smtpLogin(port, "PLAIN", "bob", "Bob-Pw")[0] == 235
        assert smtpLogin(port, "LOGIN", "carol", "Carol-Pw")[0] == 235
        assert smtpLogin(port, "PLAIN", "ann", "Bob-Pw")[0] == 535


def _badScramFile(tmp_path: Path) -> str:
    path = tmp_path / "bad-scram"
    path.write_text("# users\nok:" + makeVerifier("x").toText() + "\nbroken line\n")
    return f"scram-file:{path}"


@pytest.mark.parametrize(
    "make, mentions",
    [
        (lambda tmp: "scram-file:/nonexistent/users", ["--auth", "/nonexistent/users"]),
        (_badScramFile, ["--auth", "line 3"]),
        (lambda tmp: "nosuchkind:whatever", ["--auth", "nosuchkind"]),
        (lambda tmp: "memory:useronly", ["--auth", "memory:useronly"]),
    ],
)
def test_twistdBadAuth(tmp_path: Path, make: Any, mentions: list[str]) -> None:
    """
    A bad --auth description stops twistd at start-up: non-zero exit, no
    traceback, and a last line naming --auth and what is wrong.
    """
    description = make(tmp_path)
    result = runTwistd(
        [
            "-n",
            "--pidfile=",
            "esmtpkit",
            "--port",
            f"tcp:{freePort()}:interface={LOOPBACK}",
            "--auth",
            description,
        ],
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    for word in mentions:
        assert word in lines[-1], f"{word!r} not in the error line {lines[-1]!r}"


def test_twistdRequireAuthNeedsAuth(tmp_path: Path) -> None:
    """
    --require-auth without --auth is a start-up error.
    """
    result = runTwistd(
        ["-n", "--pidfile=", "esmtpkit", "--port", "tcp:0", "--require-auth"],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert "--require-auth" in (result.stdout + result.stderr).strip().splitlines()[-1]
