"""
The upstream side of the relay: its configuration (L{UpstreamConfig}), how
a session with it is opened (L{openSession}: connect, greeting, EHLO or
LHLO, STARTTLS, AUTH), the errors that stand for an upstream that cannot be
used and the replies they become (L{errorReply}), and how the client's
ESMTP parameters are passed on (L{mailParameters}, L{rcptParameters}).
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)

from ...reply import Reply, ReplyError
from ...session import Params
from .client import (
    SMTPClient,
    UpstreamError,
    UpstreamLost,
    UpstreamProtocolError,
    UpstreamTimeout,
    parseExtensions,
)

__all__ = [
    "TLS_MODES",
    "UpstreamConfig",
    "UpstreamSession",
    "UpstreamDown",
    "UpstreamTLSError",
    "UpstreamAuthError",
    "openSession",
    "errorReply",
    "mailParameters",
    "rcptParameters",
    "xtextEncode",
]

TLS_MODES = ("required", "opportunistic", "off")


class UpstreamDown(UpstreamError):
    """
    The upstream server could not be reached or would not serve us.
    """


class UpstreamTLSError(UpstreamError):
    """
    TLS was required and the upstream did not offer it, or a handshake
    failed.
    """


class UpstreamAuthError(UpstreamError):
    """
    The upstream server did not take our credentials.
    """


def errorReply(error: UpstreamError) -> Reply:
    """
    The reply a client gets when the upstream failed with C{error}: always
    a temporary failure, so that the client tries again later. It says
    what kind of failure it was, not the details (the upstream's address,
    say: the handler logs those).
    """
    if isinstance(error, UpstreamDown):
        enhanced, what = "4.4.1", "upstream unavailable"
    elif isinstance(error, UpstreamTimeout):
        enhanced, what = "4.4.2", "upstream timed out"
    elif isinstance(error, UpstreamTLSError):
        enhanced, what = "4.7.5", "upstream TLS failed"
    elif isinstance(error, UpstreamAuthError):
        enhanced, what = "4.7.0", "upstream authentication failed"
    elif isinstance(error, UpstreamProtocolError):
        enhanced, what = "4.5.0", "upstream protocol error"
    else:
        enhanced, what = "4.4.2", "upstream connection lost"
    return Reply(451, f"Requested action aborted: {what}", enhanced=enhanced)


@dataclass(frozen=True)
class UpstreamConfig:
    """
    Where and how the relay talks to its upstream.

    @ivar host: the upstream's host name or IP address, or the path of its
        unix socket (starting with C{/}).
    @ivar port: its port (ignored for a unix socket).
    @ivar tls: C{"required"} (STARTTLS must succeed, the certificate is
        verified unless C{verify} is off), C{"opportunistic"} (STARTTLS when
        offered, without verification; plain text otherwise) or C{"off"}.
    @ivar verify: verify the certificate under C{"required"}.
    @ivar caFile: PEM file of the CAs to trust (else the system's).
    @ivar tlsName: the name the certificate must carry (else C{host}).
    @ivar user: the AUTH user name, or L{None} for no AUTH.
    @ivar password: the AUTH password.
    @ivar insecureAuth: send credentials over an unencrypted connection.
    @ivar lmtp: speak LMTP (LHLO, a reply per recipient at the end).
    @ivar connectTimeout: seconds to connect.
    @ivar commandTimeout: seconds for each reply to a command.
    @ivar dataTimeout: seconds for the upstream to take each piece of the
        message, and for the reply at its end.
    """

    host: str
    port: int
    tls: str = "opportunistic"
    verify: bool = True
    caFile: str | None = None
    tlsName: str | None = None
    user: str | None = None
    password: str | None = None
    insecureAuth: bool = False
    lmtp: bool = False
    connectTimeout: float = 20.0
    commandTimeout: float = 50.0
    dataTimeout: float = 50.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host: must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is not a port number")
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls: {self.tls!r} is not one of {', '.join(TLS_MODES)}")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password: give both or neither")
        for name in ("connectTimeout", "commandTimeout", "dataTimeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.tls == "required" and self.verify:
            _trust(self.caFile)  # a bad CA file fails now, not per message

    def tlsOptions(self) -> Any:
        """
        The client TLS options for STARTTLS.
        """
        if self.tls == "required" and self.verify:
            return _verifying(self.tlsName or self.host, self.caFile)
        return _unverified()


@functools.lru_cache(maxsize=16)
def _trust(caFile: str | None) -> Any:
    if caFile is None:
        return platformTrust()
    try:
        with open(caFile, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(f"caFile: {caFile}: {e.strerror}") from None
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S
    )
    if not blocks:
        raise ValueError(f"caFile: {caFile}: no PEM certificate in it")
    return trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])


@functools.lru_cache(maxsize=16)
def _verifying(hostname: str, caFile: str | None) -> Any:
    return optionsForClientTLS(
        hostname,
        trustRoot=_trust(caFile),
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
    )


@functools.lru_cache(maxsize=1)
def _unverified() -> Any:
    return CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)


@dataclass
class UpstreamSession:
    """
    An open session with the upstream, ready for MAIL.

    @ivar client: the connection.
    @ivar extensions: what its EHLO (LHLO) reply offered.
    @ivar encrypted: whether STARTTLS succeeded.
    @ivar authenticated: whether we authenticated.
    """

    client: SMTPClient
    extensions: dict[str, str]
    encrypted: bool = False
    authenticated: bool = False

    @property
    def usable(self) -> bool:
        """
        Whether the connection is still open.
        """
        return bool(self.client.connected)


async def openSession(
    config: UpstreamConfig, hostname: str, reactor: Any
) -> UpstreamSession:
    """
    Connect to the upstream and make it ready for MAIL: greeting, EHLO (or
    LHLO) as C{hostname}, STARTTLS and EHLO again as C{config.tls} asks,
    then AUTH if C{config.user} is set.

    @raise UpstreamError: it could not be done (the connection is closed).
    """
    client = SMTPClient(reactor, config.commandTimeout)
    timeout = config.connectTimeout or 30
    if config.host.startswith("/"):
        endpoint: Any = UNIXClientEndpoint(reactor, config.host, timeout=timeout)
        where = config.host
    else:
        endpoint = HostnameEndpoint(reactor, config.host, config.port, timeout=timeout)
        where = f"{config.host}:{config.port}"
    try:
        await connectProtocol(endpoint, client)
    except (ConnectError, DNSLookupError, OSError) as e:
        raise UpstreamDown(f"cannot connect to {where}: {e}") from None
    try:
        return await _start(config, hostname, client, where)
    except UpstreamError:
        client.abort()
        raise
    except BaseException:
        client.abort()  # cancelled: the state of the session is unknown
        raise


async def _start(
    config: UpstreamConfig, hostname: str, client: SMTPClient, where: str
) -> UpstreamSession:
    timeout = config.commandTimeout
    try:
        greeting = await client.greeting
    except UpstreamLost as e:
        raise UpstreamDown(f"{where} closed before greeting: {e}") from None
    if greeting.code != 220:
        raise UpstreamDown(f"{where} greeted {greeting.code} {greeting.text}")
    session = UpstreamSession(client, await _hello(config, hostname, client, where))
    if config.tls != "off":
        if "STARTTLS" in session.extensions:
            reply = await client.command("STARTTLS", timeout)
            if reply.code == 220:
                client.transport.startTLS(config.tlsOptions())
                try:
                    session.extensions = await _hello(config, hostname, client, where)
                except UpstreamLost as e:
                    raise UpstreamTLSError(f"TLS handshake with {where}: {e}") from None
                session.encrypted = True
            elif config.tls == "required":
                raise UpstreamTLSError(f"{where} refused STARTTLS: {reply.text}")
        elif config.tls == "required":
            raise UpstreamTLSError(f"{where} does not offer STARTTLS")
    if config.user is not None:
        await _authenticate(config, session, where)
    return session


async def _hello(
    config: UpstreamConfig, hostname: str, client: SMTPClient, where: str
) -> dict[str, str]:
    timeout = config.commandTimeout
    verb = "LHLO" if config.lmtp else "EHLO"
    reply = await client.command(f"{verb} {hostname}", timeout)
    if reply.code == 250:
        return parseExtensions(reply)
    if not config.lmtp and reply.code in (500, 502):
        reply = await client.command(f"HELO {hostname}", timeout)
        if reply.code == 250:
            return {}
    raise UpstreamDown(f"{where} refused {verb}: {reply.code} {reply.text}")


async def _authenticate(
    config: UpstreamConfig, session: UpstreamSession, where: str
) -> None:
    assert config.user is not None and config.password is not None
    if not (session.encrypted or config.insecureAuth):
        raise UpstreamAuthError(f"no TLS with {where}: credentials not sent")
    mechanisms = session.extensions.get("AUTH", "").upper().split()
    client, timeout = session.client, config.commandTimeout
    user, password = config.user.encode(), config.password.encode()
    if "PLAIN" in mechanisms:
        reply = await client.command(
            b"AUTH PLAIN " + _b64(b"\0" + user + b"\0" + password), timeout
        )
    elif "LOGIN" in mechanisms:
        reply = await client.command("AUTH LOGIN", timeout)
        if reply.code == 334:
            reply = await client.command(_b64(user), timeout)
        if reply.code == 334:
            reply = await client.command(_b64(password), timeout)
    else:
        raise UpstreamAuthError(f"{where} offers neither AUTH PLAIN nor LOGIN")
    if reply.code != 235:
        raise UpstreamAuthError(f"{where} answered {reply.code} {reply.text}")
    session.authenticated = True


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- parameters --------------------------------------------------------------


def xtextEncode(text: str) -> str:
    """
    Encode C{text} as xtext (RFC 3461 section 4).
    """
    return "".join(
        c
        if "!" <= c <= "~" and c not in "+="
        else "".join(f"+{b:02X}" for b in c.encode())
        for c in text
    )


def _refusal(code: int, text: str, enhanced: str) -> ReplyError:
    return ReplyError(Reply(code, text, enhanced=enhanced))


def mailParameters(params: Params, session: UpstreamSession) -> str:
    """
    The MAIL parameters to send upstream for the client's C{params}: each
    one whose extension the upstream offers; SIZE, BODY=7BIT/8BITMIME and
    the DSN parameters are dropped where it does not.

    @raise ReplyError: a parameter the upstream must understand and does
        not (SMTPUTF8, BODY=BINARYMIME, REQUIRETLS).
    """
    offered = session.extensions
    out = []
    for keyword, value in params.items():
        if keyword == "SIZE":
            if "SIZE" in offered:
                out.append(f"SIZE={value}")
        elif keyword == "BODY":
            if value == "BINARYMIME":
                raise _refusal(555, "BINARYMIME cannot be relayed", "5.6.3")
            if "8BITMIME" in offered:
                out.append(f"BODY={value}")
        elif keyword == "SMTPUTF8":
            if "SMTPUTF8" not in offered:
                raise _refusal(553, "Upstream does not support SMTPUTF8", "5.6.7")
            out.append("SMTPUTF8")
        elif keyword == "REQUIRETLS":
            if not session.encrypted or "REQUIRETLS" not in offered:
                raise _refusal(550, "REQUIRETLS cannot be met upstream", "5.7.30")
            out.append("REQUIRETLS")
        elif keyword in ("RET", "ENVID"):
            if "DSN" in offered:
                text = value if keyword == "RET" else xtextEncode(value or "")
                out.append(f"{keyword}={text}")
        elif keyword == "AUTH":
            if session.authenticated and value:
                out.append("AUTH=<>" if value == "<>" else f"AUTH={xtextEncode(value)}")
    return "".join(" " + p for p in out)


def rcptParameters(params: Params, session: UpstreamSession) -> str:
    """
    The RCPT parameters to send upstream: DSN's NOTIFY and ORCPT where the
    upstream offers DSN.
    """
    if "DSN" not in session.extensions:
        return ""
    out = []
    for keyword, value in params.items():
        if keyword == "NOTIFY":
            out.append(f"NOTIFY={value}")
        elif keyword == "ORCPT" and value:
            kind, _, address = value.partition(";")
            if kind.lower() != "utf-8":
                address = xtextEncode(address)
            out.append(f"ORCPT={kind};{address}")
    return "".join(" " + p for p in out)
