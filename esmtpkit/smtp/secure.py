"""
The STARTTLS (RFC 3207) and AUTH (RFC 4954) commands of one connection:
L{Security}, made by the protocol the first time it needs it.

STARTTLS: refused while a transaction is open or when TLS is already on;
input that the client pipelined after the command is never run (it would be
plaintext injected ahead of the handshake): the server says so and closes.
After the handshake every piece of state is forgotten (HELO/EHLO, AUTH) and
the client must EHLO again; STARTTLS is not offered twice.

AUTH: offered and accepted only under TLS unless allowInsecureAuth;
credentials are checked by a L{twisted.cred} portal, never logged; failed
attempts are limited per connection. The SASL exchange is read by
L{Security} itself, as the connection's reader.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.python.failure import Failure

from ..reply import Reply
from ..security.auth import Authenticator, Challenge, Login, SASLError
from ..security.tls import tlsInfo

if TYPE_CHECKING:
    from .protocol import ESMTPProtocol

__all__ = [
    "Security",
    "MAX_AUTH_LINE",
    "encrypted",
    "canStartTLS",
    "authOffered",
    "tlsRequired",
    "secureExtensions",
]

MAX_AUTH_LINE = 12288  # RFC 4954 section 4

_AUTH_FAILED = Reply(535, "Authentication credentials invalid", enhanced="5.7.8")
_ENCRYPTION_REQUIRED = Reply(
    538, "Encryption required for requested authentication mechanism", enhanced="5.7.11"
)


def _decode(text: str) -> bytes:
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None


def encrypted(transport: Any) -> bool:
    """
    Whether C{transport} is encrypted (implicit TLS, or after STARTTLS).
    """
    return ISSLTransport.providedBy(transport)


def canStartTLS(wire: ESMTPProtocol) -> bool:
    """
    Whether STARTTLS is offered on C{wire} now.
    """
    transport = wire.transport
    return (
        wire.server.tls is not None
        and ITLSTransport.providedBy(transport)
        and not encrypted(transport)
    )


def authOffered(wire: ESMTPProtocol) -> bool:
    """
    Whether AUTH is offered on C{wire} now.
    """
    return wire.server.authenticator is not None and (
        encrypted(wire.transport) or wire.settings.allowInsecureAuth
    )


def tlsRequired(wire: ESMTPProtocol) -> Reply | None:
    """
    The refusal for MAIL or AUTH when TLS is required and not on yet.
    """
    if wire.settings.requireTLS and not encrypted(wire.transport):
        return Reply(530, "Must issue a STARTTLS command first", enhanced="5.7.0")
    return None


def secureExtensions(wire: ESMTPProtocol) -> list[str]:
    """
    The EHLO keywords of STARTTLS, REQUIRETLS and AUTH, as they apply now.
    """
    keywords = []
    if canStartTLS(wire):
        keywords.append("STARTTLS")
    if encrypted(wire.transport):
        keywords.append("REQUIRETLS")
    authenticator = wire.server.authenticator
    if authenticator is not None and authOffered(wire):
        keywords.append("AUTH " + " ".join(authenticator.mechanisms()))
    return keywords


class Security:
    """
    STARTTLS and AUTH for one connection (made by the first of them: an
    idle connection needs none).
    """

    __slots__ = (
        "_wire",
        "_failures",
        "_sasl",
        "_mechanism",
        "_final",
        "_identity",
        "_handshaking",
    )

    def __init__(self, wire: ESMTPProtocol) -> None:
        self._wire = wire
        self._failures = 0
        self._sasl: Any = None
        self._mechanism = ""
        self._final: bytes | None = None
        self._identity: Any = None
        self._handshaking = False

    # -- TLS ---------------------------------------------------------------

    @property
    def handshaking(self) -> bool:
        """
        Whether a TLS handshake started by STARTTLS is under way.
        """
        return self._handshaking

    def startTLS(self, arg: str) -> None:
        """
        The STARTTLS command.
        """
        wire = self._wire
        if arg:
            wire.writeReply(Reply(501, "Syntax: STARTTLS", enhanced="5.5.4"))
            return
        if not canStartTLS(wire):
            if encrypted(wire.transport):
                wire.writeReply(Reply(503, "TLS already active", enhanced="5.5.1"))
            else:
                wire.writeReply(Reply(502, "STARTTLS not offered", enhanced="5.5.1"))
            return
        session = wire.session
        if session.heloName is None or not session.esmtp:
            wire.writeReply(Reply(503, "Send EHLO first", enhanced="5.5.1"))
            return
        if session.transaction is not None:
            wire.writeReply(
                Reply(503, "Mail transaction in progress", enhanced="5.5.1")
            )
            return
        if wire.moreInput:
            # Plaintext pipelined after STARTTLS would be read as if it came
            # through TLS (CVE-2011-0411): never run it.
            wire.violation("input pipelined after STARTTLS")
            return

        def answered(reply: Reply) -> None:
            wire.writeReply(reply)
            if reply.code == 220:
                self._handshake()

        wire.conversation.command("STARTTLS", (), answered)

    def _handshake(self) -> None:
        wire = self._wire
        session = wire.session
        for notify in wire.server.events.tlsStarted:
            notify(session)
        session.heloName = None
        session.esmtp = False
        session.authenticated = None
        session.authMechanism = None
        self._handshaking = True
        # The 220 goes out in plaintext, before the handshake; from then on,
        # everything goes through TLS.
        wire.writer.stopDirect()
        wire.transport.startTLS(wire.server.tls)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is over: the session learns the version, cipher
        and client certificate.
        """
        self._handshaking = False
        wire = self._wire
        tls = wire.session.tls = tlsInfo(wire.transport)
        if tls is not None:
            for notify in wire.server.events.tlsEstablished:
                notify(wire.session, tls)

    def connectionLost(self) -> None:
        """
        The connection is gone; a handshake under way failed.
        """
        if self._handshaking:
            self._handshaking = False
            for notify in self._wire.server.events.tlsFailed:
                notify(self._wire.session)

    # -- AUTH --------------------------------------------------------------

    def _authenticator(self) -> Authenticator:
        authenticator = self._wire.server.authenticator
        assert authenticator is not None
        return authenticator

    def auth(self, arg: str) -> None:
        """
        The AUTH command.
        """
        wire = self._wire
        session = wire.session
        mechanism, _, initial = arg.partition(" ")
        refusal = None
        if not mechanism:
            refusal = Reply(
                501, "Syntax: AUTH mechanism [initial-response]", enhanced="5.5.4"
            )
        elif wire.server.authenticator is None or not session.esmtp:
            refusal = Reply(503, "AUTH not offered", enhanced="5.5.1")
        elif session.authenticated is not None:
            refusal = Reply(503, "Already authenticated", enhanced="5.5.1")
        elif session.transaction is not None:
            refusal = Reply(503, "Mail transaction in progress", enhanced="5.5.1")
        else:
            refusal = tlsRequired(wire)
            if refusal is None and not authOffered(wire):
                refusal = _ENCRYPTION_REQUIRED
        if refusal is not None:
            wire.writeReply(refusal)
            return
        sasl = self._authenticator().start(mechanism.upper(), session.hostname)
        if sasl is None:
            wire.writeReply(
                Reply(504, "Unrecognized authentication type", enhanced="5.5.4")
            )
            return
        response: bytes | None = None
        if initial:
            try:
                response = _decode(initial)
            except ValueError:
                wire.writeReply(Reply(501, "Cannot decode response", enhanced="5.5.2"))
                return
        self._sasl = sasl
        self._mechanism = mechanism.upper()
        self._final = None
        wire.conversation.hooks.now(lambda: self._step(response))

    # The SASL exchange reads input as the connection's reader.

    def lineTooLong(self) -> bool:
        return False

    def rawDataReceived(self, data: bytes) -> None:
        raise AssertionError("SASL responses are read as lines")

    def lineReceived(self, line: bytes) -> None:
        """
        A line of the SASL exchange (never logged, never a command).
        """
        wire = self._wire
        wire.readerDone()
        if line == b"*":
            self._sasl = None
            wire.writeReply(Reply(501, "Authentication cancelled", enhanced="5.0.0"))
            return
        try:
            response = _decode(line.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            self._sasl = None
            wire.writeReply(Reply(501, "Cannot decode response", enhanced="5.5.2"))
            return
        if self._final is not None:
            # The client has read the server's final data: now succeed.
            wire.conversation.hooks.now(self._accepted)
            return
        wire.conversation.hooks.now(lambda: self._step(response))

    def _step(self, response: bytes | None) -> None:
        try:
            result = self._sasl.step(response)
        except SASLError:
            self._failed(
                Reply(501, "Malformed authentication response", enhanced="5.5.2")
            )
            return
        if isinstance(result, Deferred):
            self._wire.conversation.hooks.wait(result, self._result)
        else:
            self._result(result)

    def _result(self, result: Any) -> None:
        wire = self._wire
        if isinstance(result, Failure):
            for notify in wire.server.events.hookFailed:
                notify(wire.session, "SASL", result)
            self._failed(
                Reply(454, "Temporary authentication failure", enhanced="4.7.0")
            )
        elif isinstance(result, Challenge):
            self._challenge(result.data)
        else:
            assert isinstance(result, Login)
            wire.conversation.hooks.wait(
                self._authenticator().login(result.credentials),
                lambda outcome: self._loggedIn(outcome, result.final),
            )

    def _challenge(self, data: bytes) -> None:
        wire = self._wire
        wire.readWith(self, raw=False)
        wire.MAX_LENGTH = MAX_AUTH_LINE
        wire.writer.write(b"334 " + base64.b64encode(data) + b"\r\n")

    def _loggedIn(self, outcome: Any, final: bytes | None) -> None:
        if isinstance(outcome, Failure):
            if not outcome.check(UnauthorizedLogin, UnhandledCredentials):
                wire = self._wire
                for notify in wire.server.events.hookFailed:
                    notify(wire.session, "credentials check", outcome)
            self._failed(_AUTH_FAILED)
            return
        self._identity = outcome
        if final is not None:
            self._final = final
            self._challenge(final)
            return
        self._accepted()

    def _accepted(self) -> None:
        identity = self._identity
        self._sasl = None
        self._final = None
        wire = self._wire

        def answered(reply: Reply) -> None:
            if reply.code // 100 == 2:
                wire.session.authenticated = identity
                wire.session.authMechanism = self._mechanism
                for notify in wire.server.events.authSucceeded:
                    notify(wire.session, self._mechanism, identity)
                wire.writeReply(reply)
            else:
                self._failed(reply)

        wire.conversation.hooks.callReply("AUTH", (identity,), answered)

    def _failed(self, reply: Reply) -> None:
        wire = self._wire
        self._sasl = None
        self._final = None
        wire.readerDone()
        self._failures += 1
        for notify in wire.server.events.authFailed:
            notify(wire.session, self._mechanism, self._failures)
        limit = wire.settings.maxAuthFailures
        wire.writeReply(reply)
        if limit and self._failures >= limit:
            wire.limitReached("auth-failures", "made too many authentication failures")
            host = wire.session.hostname
            wire.writeReply(
                Reply(421, f"{host} Too many authentication failures", enhanced="4.7.0")
            )
        elif wire.settings.errorDelay:
            delay = wire.settings.errorDelay * self._failures
            hooks = wire.conversation.hooks
            hooks.now(lambda: hooks.sleep(delay))
