"""
The STARTTLS (RFC 3207) and AUTH (RFC 4954) commands, as a mixin of
L{ESMTPProtocol <esmtpkit.smtp.protocol.ESMTPProtocol>}.

STARTTLS: refused while a transaction is open or when TLS is already on;
input that the client pipelined after the command is never run (it would be
plaintext injected ahead of the handshake): the server says so and closes.
After the handshake every piece of state is forgotten (HELO/EHLO, AUTH) and
the client must EHLO again; STARTTLS is not offered twice.

AUTH: offered and accepted only under TLS unless allowInsecureAuth;
credentials are checked by a L{twisted.cred} portal, never logged; failed
attempts are limited per connection.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, ITLSTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from ..reply import Reply
from ..security.auth import Authenticator, Challenge, Login, SASLError
from ..security.tls import tlsInfo
from .message import COMMAND

if TYPE_CHECKING:
    from ..core.hooks import HookRunner
    from ..server.factory import ESMTPFactory, LevelLogger
    from ..session import Session
    from ..settings import Settings

__all__ = ["SecureCommands", "AUTH_STATE"]

AUTH_STATE = "auth"  # line mode: reading SASL responses

MAX_AUTH_LINE = 12288  # RFC 4954 section 4

_AUTH_FAILED = Reply(535, "Authentication credentials invalid", enhanced="5.7.8")
_ENCRYPTION_REQUIRED = Reply(
    538, "Encryption required for requested authentication mechanism", enhanced="5.7.11"
)


@implementer(IHandshakeListener)
class SecureCommands:
    """
    STARTTLS and AUTH for the protocol.
    """

    # Provided by the protocol:
    factory: ESMTPFactory
    session: Session
    settings: Settings
    log: LevelLogger
    handler: Any
    transport: Any
    _hooks: HookRunner
    _state: str
    _verb: str
    moreInput: bool
    MAX_LENGTH: int

    def _write(self, reply: Reply, enhanced: bool = True) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _violation(self, what: str) -> None:
        raise NotImplementedError

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def flushOutput(self) -> None:
        raise NotImplementedError

    _directSocket: Any = None

    _authFailures = 0
    _sasl: Any = None

    # -- TLS ---------------------------------------------------------------

    def tlsActive(self) -> bool:
        """
        Whether this connection is encrypted (implicit TLS, or after
        STARTTLS).
        """
        return ISSLTransport.providedBy(self.transport)

    def _canStartTLS(self) -> bool:
        return (
            self.factory.tls is not None
            and ITLSTransport.providedBy(self.transport)
            and not self.tlsActive()
        )

    def _secureExtensions(self) -> list[str]:
        keywords = []
        if self._canStartTLS():
            keywords.append("STARTTLS")
        if self.tlsActive():
            keywords.append("REQUIRETLS")
        if self._authOffered():
            keywords.append("AUTH " + " ".join(self._authenticator().mechanisms()))
        return keywords

    def do_STARTTLS(self, arg: str) -> None:
        if arg:
            self._write(Reply(501, "Syntax: STARTTLS", enhanced="5.5.4"))
            return
        if not self._canStartTLS():
            if self.tlsActive():
                self._write(Reply(503, "TLS already active", enhanced="5.5.1"))
            else:
                self._write(Reply(502, "STARTTLS not offered", enhanced="5.5.1"))
            return
        if self.session.heloName is None or not self.session.esmtp:
            self._write(Reply(503, "Send EHLO first", enhanced="5.5.1"))
            return
        if self.session.transaction is not None:
            self._write(Reply(503, "Mail transaction in progress", enhanced="5.5.1"))
            return
        if self.moreInput:
            # Plaintext pipelined after STARTTLS would be read as if it came
            # through TLS (CVE-2011-0411): never run it.
            self._violation("input pipelined after STARTTLS")
            return

        def answered(reply: Reply) -> None:
            if reply.code != 220:
                self._write(reply)
                return
            self._write(reply)
            self._startTLS()

        self._hooks.run(self._hooks.callReply, "STARTTLS", (), answered)

    def _startTLS(self) -> None:
        self.log.info("session {session} starting TLS", session=self.session.id)
        session = self.session
        session.heloName = None
        session.esmtp = False
        session.authenticated = None
        self.flushOutput()  # the 220 goes out in plaintext, before the handshake
        self._directSocket = None  # from now on, everything goes through TLS
        self.transport.startTLS(self.factory.tls)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is over (after STARTTLS, or on an implicit TLS
        listener): the session learns the version, cipher and client
        certificate.
        """
        self.session.tls = tlsInfo(self.transport)
        if self.session.tls is not None:
            self.log.info(
                "session {session} TLS {version} {cipher}",
                session=self.session.id,
                version=self.session.tls.version,
                cipher=self.session.tls.cipher,
            )

    def _tlsRequired(self) -> Reply | None:
        """
        The refusal for MAIL or AUTH when TLS is required and not on yet.
        """
        if self.settings.requireTLS and not self.tlsActive():
            return Reply(530, "Must issue a STARTTLS command first", enhanced="5.7.0")
        return None

    # -- AUTH --------------------------------------------------------------

    def _authenticator(self) -> Authenticator:
        authenticator = self.factory.authenticator
        assert authenticator is not None
        return authenticator

    def _authOffered(self) -> bool:
        return self.factory.authenticator is not None and (
            self.tlsActive() or self.settings.allowInsecureAuth
        )

    def do_AUTH(self, arg: str) -> None:
        session = self.session
        mechanism, _, initial = arg.partition(" ")
        refusal = None
        if not mechanism:
            refusal = Reply(
                501, "Syntax: AUTH mechanism [initial-response]", enhanced="5.5.4"
            )
        elif self.factory.authenticator is None or not session.esmtp:
            refusal = Reply(503, "AUTH not offered", enhanced="5.5.1")
        elif session.authenticated is not None:
            refusal = Reply(503, "Already authenticated", enhanced="5.5.1")
        elif session.transaction is not None:
            refusal = Reply(503, "Mail transaction in progress", enhanced="5.5.1")
        else:
            refusal = self._tlsRequired()
            if refusal is None and not self._authOffered():
                refusal = _ENCRYPTION_REQUIRED
        if refusal is not None:
            self._write(refusal)
            return
        sasl = self._authenticator().start(mechanism.upper(), session.hostname)
        if sasl is None:
            self._write(
                Reply(504, "Unrecognized authentication type", enhanced="5.5.4")
            )
            return
        response: bytes | None = None
        if initial:
            try:
                response = _decode(initial)
            except ValueError:
                self._write(Reply(501, "Cannot decode response", enhanced="5.5.2"))
                return
        self._sasl = sasl
        self._saslFinal: bytes | None = None
        self._hooks.now(lambda: self._saslStep(response))

    def _authLine(self, line: bytes) -> None:
        """
        A line of the SASL exchange (never logged, never a command).
        """
        self._state = COMMAND
        self.MAX_LENGTH = self.settings.maxLineLength
        if line == b"*":
            self._sasl = None
            self._write(Reply(501, "Authentication cancelled", enhanced="5.0.0"))
            return
        try:
            response = _decode(line.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            self._sasl = None
            self._write(Reply(501, "Cannot decode response", enhanced="5.5.2"))
            return
        if self._saslFinal is not None:
            # The client has read the server's final data: now succeed.
            self._hooks.now(self._authAccepted)
            return
        self._hooks.now(lambda: self._saslStep(response))

    def _saslStep(self, response: bytes | None) -> None:
        try:
            result = self._sasl.step(response)
        except SASLError:
            self._authFailed(
                Reply(501, "Malformed authentication response", enhanced="5.5.2")
            )
            return
        if isinstance(result, Deferred):
            self._hooks.wait(result, self._saslResult)
        else:
            self._saslResult(result)

    def _saslResult(self, result: Any) -> None:
        if isinstance(result, Failure):
            self.log.failure(
                "session {session} SASL error", result, session=self.session.id
            )
            self._authFailed(
                Reply(454, "Temporary authentication failure", enhanced="4.7.0")
            )
        elif isinstance(result, Challenge):
            self._challenge(result.data)
        else:
            assert isinstance(result, Login)
            self._hooks.wait(
                self._authenticator().login(result.credentials),
                lambda outcome: self._loggedIn(outcome, result.final),
            )

    def _challenge(self, data: bytes) -> None:
        self._state = AUTH_STATE
        self.MAX_LENGTH = MAX_AUTH_LINE
        self._send(b"334 " + base64.b64encode(data) + b"\r\n")

    def _loggedIn(self, outcome: Any, final: bytes | None) -> None:
        if isinstance(outcome, Failure):
            if not outcome.check(UnauthorizedLogin, UnhandledCredentials):
                self.log.failure(
                    "session {session} credentials check failed",
                    outcome,
                    session=self.session.id,
                )
            self._authFailed(_AUTH_FAILED)
            return
        self._identity = outcome
        if final is not None:
            self._saslFinal = final
            self._challenge(final)
            return
        self._authAccepted()

    def _authAccepted(self) -> None:
        identity = self._identity
        self._sasl = None
        self._saslFinal = None

        def answered(reply: Reply) -> None:
            if reply.code // 100 == 2:
                self.session.authenticated = identity
                self.log.info(
                    "session {session} authenticated as {identity}",
                    session=self.session.id,
                    identity=identity,
                )
                self._write(reply)
            else:
                self._authFailed(reply)

        self._hooks.callReply("AUTH", (identity,), answered)

    def _authFailed(self, reply: Reply) -> None:
        self._sasl = None
        self._saslFinal = None
        self._state = COMMAND
        self.MAX_LENGTH = self.settings.maxLineLength
        self._authFailures += 1
        self.log.info(
            "session {session} authentication failed ({failures})",
            session=self.session.id,
            failures=self._authFailures,
        )
        limit = self.settings.maxAuthFailures
        self._write(reply)
        if limit and self._authFailures >= limit:
            self._write(
                Reply(
                    421,
                    f"{self.session.hostname} Too many authentication failures",
                    enhanced="4.7.0",
                )
            )
        elif self.settings.errorDelay:
            delay = self.settings.errorDelay * self._authFailures
            self._hooks.now(lambda: self._hooks.sleep(delay))


def _decode(text: str) -> bytes:
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
