"""
Endpoint descriptions for esmtpkit listeners: Twisted's strports, with
four additions.

  - C{lmtp:...} serves LMTP (RFC 2033) instead of SMTP on the endpoint
    that follows (C{lmtp:unix:/run/esmtpkit/lmtp.sock},
    C{lmtp:tcp:2424:interface=127.0.0.1}); C{milter:...} serves the
    handler as a milter to Postfix or Sendmail
    (C{milter:tcp:8890:interface=127.0.0.1}, C{milter:unix:/path}); see
    L{splitWire}.
  - C{ssl:PORT} without C{privateKey=} is implicit TLS (RFC 8314) with the
    server's own certificate files (C{--tls-cert}/C{--tls-key}), which
    SIGHUP reloads like those of STARTTLS.
  - C{haproxy:...} reads a PROXY protocol header (HAProxy's v1 and v2)
    before the SMTP session starts; see below.

Twisted's own C{haproxy:} endpoint starts the wrapped protocol as soon as the
TCP connection is made, before the PROXY header has been read, so an SMTP
server would greet, log and apply its per-client limits with the load
balancer's address (Twisted #12501). The wrapper here starts the SMTP
session only once the header has been read, and gives up on a connection
whose header does not come in time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.haproxy._wrapper import (
    HAProxyProtocolWrapper,
    HAProxyWrappingFactory,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "splitWire",
    "ProxyHeaderFirstEndpoint",
    "ImplicitTLSEndpoint",
    "serverFromDescription",
    "HEADER_TIMEOUT",
]

HEADER_TIMEOUT = 5.0
"""
Seconds a connection may take to send its PROXY header (as Postfix's
smtpd_upstream_proxy_timeout).
"""


WIRES = ("lmtp", "milter")
"""
The wires a port description may ask for with a prefix (SMTP has none).
"""


def splitWire(description: str) -> tuple[str, str]:
    """
    The wire a port description asks for, C{"lmtp"} with an C{lmtp:}
    prefix, C{"milter"} with a C{milter:} prefix, or C{"smtp"}, and the
    endpoint description without the prefix.
    """
    for wire in WIRES:
        if description.startswith(wire + ":"):
            return wire, description[len(wire) + 1 :]
    return "smtp", description


class _Collect:
    """
    Stands in for the wrapped protocol until the header has been read.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def makeConnection(self, transport: Any) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)


class _HeaderFirstWrapper(HAProxyProtocolWrapper):
    """
    An L{HAProxyProtocolWrapper} that connects the wrapped protocol only
    once the PROXY header has been parsed, so that its C{connectionMade}
    already sees the client's address in C{getPeer()}.
    """

    _started = False
    _timer: Any = None

    def makeConnection(self, transport: Any) -> None:
        real = self.wrappedProtocol
        self.wrappedProtocol = _Collect()  # type: ignore[assignment]
        try:
            super().makeConnection(transport)
        finally:
            self.wrappedProtocol = real
        clock: Any = getattr(self.factory.wrappedFactory, "clock", None)
        if clock is None:
            from twisted.internet import reactor as clock
        self._timer = clock.callLater(HEADER_TIMEOUT, self.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        real, collect = self.wrappedProtocol, _Collect()
        self.wrappedProtocol = collect  # type: ignore[assignment]
        try:
            super().dataReceived(data)
        finally:
            self.wrappedProtocol = real
        if getattr(self, "_proxyInfo", None) is None or self.disconnecting:
            return
        self._started = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        real.makeConnection(self)  # type: ignore[arg-type]
        for chunk in collect.data:
            real.dataReceived(chunk)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._started:
            super().connectionLost(reason)
        else:
            Protocol.connectionLost(self, reason)
            self.factory.unregisterProtocol(self)


class _HeaderFirstWrappingFactory(HAProxyWrappingFactory):
    protocol = _HeaderFirstWrapper  # type: ignore[assignment]


@implementer(IStreamServerEndpoint)
class ProxyHeaderFirstEndpoint:
    """
    A server endpoint that reads a PROXY header (v1 or v2) on each
    connection before starting the protocol of the listening factory.
    """

    def __init__(self, wrapped: IStreamServerEndpoint) -> None:
        self._wrapped = wrapped

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        return self._wrapped.listen(_HeaderFirstWrappingFactory(protocolFactory))


@implementer(IStreamServerEndpoint)
class ImplicitTLSEndpoint:
    """
    A server endpoint whose connections speak TLS from the first byte, with
    a TLS connection creator such as L{esmtpkit.security.tls.ServerTLS}.
    """

    def __init__(self, wrapped: IStreamServerEndpoint, tls: Any) -> None:
        self._wrapped = wrapped
        self._tls = tls

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        return self._wrapped.listen(
            TLSMemoryBIOFactory(self._tls, False, protocolFactory)
        )


def wrapFactory(description: str, factory: Any, tls: Any = None) -> Any:
    """
    C{factory} wrapped in the layers that C{description} asks for on top of
    a plain socket: a PROXY header reader for C{haproxy:}, TLS for C{ssl:}
    (for sockets made elsewhere, such as those C{--workers} inherit).
    """
    if description.startswith("haproxy:"):
        inner = wrapFactory(description[len("haproxy:") :], factory, tls)
        return _HeaderFirstWrappingFactory(inner)
    if description.startswith("ssl:"):
        if tls is None:
            raise ValueError("ssl: needs --tls-cert and --tls-key")
        return TLSMemoryBIOFactory(tls, False, factory)
    return factory


def serverFromDescription(
    reactor: Any, description: str, tls: Any = None
) -> IStreamServerEndpoint:
    """
    Like L{serverFromString}, with C{haproxy:...} read header-first and,
    when C{tls} is given, C{ssl:...} without a C{privateKey} using it.

    @raise ValueError: C{ssl:} without C{privateKey} and no C{tls}.
    """
    if description.startswith("haproxy:"):
        inner = serverFromDescription(reactor, description[len("haproxy:") :], tls)
        return ProxyHeaderFirstEndpoint(inner)
    if description.startswith("ssl:") and "privateKey=" not in description:
        if tls is None:
            raise ValueError("ssl: needs privateKey= (or --tls-cert and --tls-key)")
        tcp = serverFromString(reactor, "tcp:" + description[len("ssl:") :])
        return ImplicitTLSEndpoint(tcp, tls)
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    return endpoint
