"""
An in-memory MTA for tests of the milter server face: L{FakeMTA} drives a
real L{MilterConnection} over a L{StringTransport} with a fake clock, and
reads the packets it answers with.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import formatEvent

from esmtpkit.milter import wire
from esmtpkit.milter.factory import MilterFactory
from esmtpkit.testing import LogCollector

#: What Postfix 3.x offers: version 6, every action, every step flag.
POSTFIX_ACTIONS = 0x1FF
POSTFIX_PROTOCOL = 0x1FFFFF


class Log(LogCollector):
    """
    A L{LogCollector} that can show its events as text.
    """

    def text(self) -> str:
        return "\n".join(formatEvent(event) or "" for event in self.events)


class FakeMTA:
    """
    The MTA side of one milter connection.

    @ivar factory: the L{MilterFactory}.
    @ivar protocol: the L{MilterConnection} under test.
    @ivar transport: its in-memory transport.
    @ivar clock: the factory's clock.
    @ivar log: the log events of the server.
    """

    def __init__(
        self, handler: Any, factory: MilterFactory | None = None, **options: Any
    ) -> None:
        """
        @param factory: the factory to connect to (another FakeMTA's), or
            L{None} for a new one for C{handler} with C{options}.
        """
        if factory is None:
            self.clock = Clock()
            self.log = Log()
            options.setdefault("hostname", "milter.test")
            factory = MilterFactory(
                handler, clock=self.clock, logObserver=self.log, **options
            )
        else:
            self.clock = factory.clock  # type: ignore[assignment]
            self.log = factory.log.observer  # type: ignore[assignment]
        self.factory = factory
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransportWithDisconnection(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8890),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
        )
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        self._reader = wire.PacketReader()

    @property
    def session(self) -> Any:
        return self.protocol.session

    @property
    def handler(self) -> Any:
        return self.protocol.conversation.handler

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting or not self.transport.connected

    def send(self, command: bytes, data: bytes = b"") -> None:
        """
        Send one packet.
        """
        self.protocol.dataReceived(wire.packet(command, data))

    def sendRaw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def packets(self) -> list[tuple[bytes, bytes]]:
        """
        The packets the milter wrote since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return list(self._reader.feed(data))

    def negotiate(
        self,
        version: int = 6,
        actions: int = POSTFIX_ACTIONS,
        protocol: int = POSTFIX_PROTOCOL,
    ) -> tuple[int, int, int, dict[int, list[str]]]:
        """
        Send OPTNEG and return the milter's answer, decoded.
        """
        self.send(wire.OPTNEG, struct.pack("!III", version, actions, protocol))
        [(command, data)] = self.packets()
        assert command == wire.OPTNEG, command
        return wire.decodeNegotiation(data)

    def macros(self, command: bytes, **values: str) -> None:
        """
        Send macros for C{command} (names given with C{_} for braces:
        C{daemon_name="mx"} is C{{daemon_name}}, C{j="host"} is C{j}).
        """
        named = {(k if len(k) == 1 else "{" + k + "}"): v for k, v in values.items()}
        self.send(wire.MACRO, wire.encodeMacros(command, named))

    def connect(
        self,
        name: str = "client.example",
        family: bytes = wire.FAMILY_INET,
        port: int = 54321,
        address: str = "192.0.2.1",
    ) -> None:
        data = name.encode() + b"\0" + family
        if family != wire.FAMILY_UNKNOWN:
            data += struct.pack("!H", port) + address.encode() + b"\0"
        self.send(wire.CONNECT, data)

    def command(
        self, command: bytes, *strings: str | bytes
    ) -> list[tuple[bytes, bytes]]:
        """
        Send C{command} with NUL-ended C{strings}; return the packets the
        milter answered with.
        """
        self.send(command, wire.strings(*strings))
        return self.packets()

    def data(self, command: bytes, data: bytes = b"") -> list[tuple[bytes, bytes]]:
        """
        Send C{command} with C{data} as it is (a body chunk); return the
        packets the milter answered with.
        """
        self.send(command, data)
        return self.packets()

    def reply(self, command: bytes, *strings: str | bytes) -> tuple[bytes, bytes]:
        """
        Like L{command}, for a command that gets exactly one packet back.
        """
        answered = self.command(command, *strings)
        assert len(answered) == 1, answered
        return answered[0]

    def start(self, **negotiation: Any) -> None:
        """
        Negotiate, connect and greet with HELO: the usual start.
        """
        self.negotiate(**negotiation)
        self.macros(wire.CONNECT, j="mx.example.net", daemon_name="smtpd")
        self.connect()
        self.packets()
        self.command(wire.HELO, "client.example")

    def close(self) -> None:
        self.protocol.connectionLost(None)  # type: ignore[arg-type]


def replyText(data: bytes) -> str:
    """
    The text of a REPLYCODE packet's data.
    """
    (text,) = wire.splitStrings(data, 1)
    return text.decode()
