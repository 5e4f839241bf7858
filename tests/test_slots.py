"""
Per-connection objects keep their attributes in slots: no C{__dict__} per
connection. L{PushbackLineReceiver}, the base of every connection, does not
inherit from Twisted's C{Protocol} or C{LineReceiver} (which have no
C{__slots__}) and provides what Twisted expects of a protocol itself.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import ILoggingContext, IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyClass, verifyObject

from esmtpkit import ESMTPFactory, ESMTPHandler
from esmtpkit.core.content import Content
from esmtpkit.core.conversation import Conversation
from esmtpkit.core.hooks import HookRunner
from esmtpkit.handlers import Sink
from esmtpkit.io.writer import ReplyWriter
from esmtpkit.session import Session, Transaction
from esmtpkit.smtp.connection import SMTPConnection
from esmtpkit.smtp.data import ChunkReader, DataReader
from esmtpkit.smtp.deadline import RequestDeadline
from esmtpkit.smtp.lines import PushbackLineReceiver
from esmtpkit.smtp.lmtp import LMTPProtocol
from esmtpkit.smtp.protocol import ESMTPProtocol
from esmtpkit.testing import LMTPTestConnection, SMTPTestConnection

from .helpers import LOOPBACK, readReplies, waitUntil

reactor: Any = _reactor


def assertNoDict(testCase: SynchronousTestCase, obj: object, kind: type) -> None:
    testCase.assertIs(type(obj), kind)
    testCase.assertFalse(
        hasattr(obj, "__dict__"), f"{kind.__name__} instances have a __dict__"
    )


class ProtocolInterfaceTests(SynchronousTestCase):
    """
    L{PushbackLineReceiver} and the connections built on it are Twisted
    protocols without Twisted's protocol classes.
    """

    def test_notTwistedProtocol(self) -> None:
        """
        Neither Twisted's C{Protocol} nor C{LineReceiver} is a base.
        """
        for cls in (PushbackLineReceiver, SMTPConnection, ESMTPProtocol, LMTPProtocol):
            self.assertFalse(issubclass(cls, Protocol), cls)
            self.assertFalse(issubclass(cls, LineReceiver), cls)

    def test_interfaces(self) -> None:
        """
        The classes, and the SMTP and LMTP connections, provide
        L{IProtocol} and L{ILoggingContext}.
        """
        for cls in (PushbackLineReceiver, ESMTPProtocol, LMTPProtocol):
            verifyClass(IProtocol, cls)
            verifyClass(ILoggingContext, cls)
        for conn in (SMTPTestConnection(Sink), LMTPTestConnection(Sink)):
            self.assertTrue(verifyObject(IProtocol, conn.protocol))
            self.assertTrue(verifyObject(ILoggingContext, conn.protocol))
            self.assertEqual(conn.protocol.logPrefix(), type(conn.protocol).__name__)
            self.assertIs(conn.protocol.transport, conn.transport)
            self.assertEqual(conn.protocol.connected, 1)
            self.assertIs(conn.protocol.factory, conn.factory)

    def test_makeConnection(self) -> None:
        """
        C{makeConnection} sets C{transport} and C{connected}, then calls
        C{connectionMade}.
        """
        seen: list[Any] = []

        class Receiver(PushbackLineReceiver):
            __slots__ = ()

            def connectionMade(self) -> None:
                seen.append((self.transport, self.connected))

        receiver = Receiver()
        self.assertEqual((receiver.transport, receiver.connected), (None, 0))
        self.assertIsNone(receiver.factory)
        transport = StringTransport()
        receiver.makeConnection(transport)
        self.assertEqual(seen, [(transport, 1)])
        receiver.connectionLost()  # the default does nothing
        self.assertEqual(receiver.logPrefix(), "Receiver")

    def test_linesAndRaw(self) -> None:
        """
        Lines and raw data, the modes switched from the callbacks, bytes
        handed back read next; C{delimiter}, L{sendLine},
        L{clearLineBuffer} between reads.
        """
        events: list[tuple[str, bytes]] = []

        class Receiver(PushbackLineReceiver):
            __slots__ = ()

            def lineReceived(self, line: bytes) -> None:
                events.append(("line", line))
                if line == b"RAW":
                    self.setRawMode()

            def rawDataReceived(self, data: bytes) -> None:
                events.append(("raw", data[:3]))
                self.setLineMode(data[3:])

        receiver = Receiver()
        transport = StringTransport()
        receiver.makeConnection(transport)
        self.assertEqual(receiver.line_mode, 1)
        receiver.dataReceived(b"a\r\nRAW\r\nxyzb\r\npartial")
        self.assertEqual(
            events, [("line", b"a"), ("line", b"RAW"), ("raw", b"xyz"), ("line", b"b")]
        )
        self.assertEqual(receiver.clearLineBuffer(), b"partial")
        self.assertEqual(receiver.clearLineBuffer(), b"")
        receiver.dataReceived(b"c\r\n")
        self.assertEqual(events[-1], ("line", b"c"))
        self.assertEqual(receiver.delimiter, b"\r\n")
        receiver.sendLine(b"250 OK")
        self.assertEqual(transport.value(), b"250 OK\r\n")

    def test_clearDuringRead(self) -> None:
        """
        L{clearLineBuffer} from a callback is refused rather than leaving
        the rest of the read in place.
        """

        class Receiver(PushbackLineReceiver):
            __slots__ = ()

            def lineReceived(self, line: bytes) -> None:
                self.clearLineBuffer()

        receiver = Receiver()
        receiver.makeConnection(StringTransport())
        self.assertRaises(RuntimeError, receiver.dataReceived, b"a\r\nb\r\n")

    def test_lineLengthExceeded(self) -> None:
        """
        By default, a line longer than C{MAX_LENGTH} closes the connection.
        """
        receiver = PushbackLineReceiver()
        transport = StringTransport()
        receiver.makeConnection(transport)
        receiver.MAX_LENGTH = 4
        receiver.dataReceived(b"toolong")
        self.assertTrue(transport.disconnecting)

    def test_producer(self) -> None:
        """
        The push producer methods hold reading and tell the transport;
        resuming reads what waited first.
        """
        lines: list[bytes] = []

        class Receiver(PushbackLineReceiver):
            __slots__ = ()

            def lineReceived(self, line: bytes) -> None:
                lines.append(line)
                self.pauseProducing()

        receiver = Receiver()
        transport = StringTransport()
        receiver.makeConnection(transport)
        receiver.dataReceived(b"a\r\nb\r\n")
        self.assertEqual((lines, receiver.paused), ([b"a"], True))
        self.assertEqual(transport.producerState, "paused")
        receiver.resumeProducing()
        self.assertEqual(lines, [b"a", b"b"])
        receiver.stopProducing()
        self.assertTrue(receiver.paused)
        self.assertEqual(transport.producerState, "stopped")


class NoDictTests(SynchronousTestCase):
    """
    The objects a connection keeps have no C{__dict__}.
    """

    def test_smtpConnection(self) -> None:
        """
        An SMTP connection and what it is made of, during DATA and during
        BDAT.
        """
        conn = SMTPTestConnection(Sink)
        protocol = conn.protocol
        assertNoDict(self, protocol, ESMTPProtocol)
        assertNoDict(self, protocol.conversation, Conversation)
        assertNoDict(self, protocol.conversation.hooks, HookRunner)
        assertNoDict(self, protocol.writer, ReplyWriter)
        assertNoDict(self, protocol.session, Session)
        assertNoDict(self, protocol.handler, Sink)
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        assertNoDict(self, protocol.session.transaction, Transaction)
        self.assertEqual(conn.command("DATA").code, 354)
        reader = protocol._message
        assertNoDict(self, reader, DataReader)
        assertNoDict(self, reader.content, Content)
        assertNoDict(self, protocol._deadline, RequestDeadline)
        conn.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(conn.replies()[0].code, 250)
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        conn.send(b"BDAT 4\r\nab\r\n")
        self.assertEqual(conn.replies()[0].code, 250)
        reader = protocol._message
        assertNoDict(self, reader, ChunkReader)
        assertNoDict(self, reader.content, Content)

    def test_lmtpConnection(self) -> None:
        conn = LMTPTestConnection(Sink)
        assertNoDict(self, conn.protocol, LMTPProtocol)
        assertNoDict(self, conn.protocol.conversation, Conversation)

    def test_handlers(self) -> None:
        """
        L{ESMTPHandler} and L{Sink} have no C{__dict__}; a subclass without
        C{__slots__} has one, as usual, and works.
        """
        assertNoDict(self, ESMTPHandler(), ESMTPHandler)
        assertNoDict(self, Sink(), Sink)

        class Mine(ESMTPHandler):
            def __init__(self) -> None:
                super().__init__()
                self.mine = True

        conn = SMTPTestConnection(Mine)
        self.assertTrue(conn.handler.mine)
        self.assertEqual(conn.command("EHLO client.example").code, 250)

    def test_subclassWithoutSlots(self) -> None:
        """
        A protocol subclass without C{__slots__} gets a C{__dict__} for its
        own attributes and still works.
        """

        class Counting(ESMTPProtocol):
            bytesIn = 0

            def dataReceived(self, data: bytes) -> None:
                self.bytesIn += len(data)
                super().dataReceived(data)

        class Factory(ESMTPFactory):
            protocol = Counting

        class Connection(SMTPTestConnection):
            factoryClass = Factory

        conn = Connection(Sink)
        self.assertEqual(conn.command("NOOP").code, 250)
        protocol: Any = conn.protocol
        self.assertIsInstance(protocol, Counting)
        self.assertEqual(protocol.bytesIn, 6)
        self.assertEqual(protocol.__dict__, {"bytesIn": 6})


class RealSocketTests(TestCase):
    """
    Over a real loopback TCP connection, the connection is a slotted
    protocol on a Twisted transport and serves a transaction.
    """

    timeout = 60

    async def test_loopback(self) -> None:
        protocols: list[Any] = []

        class Watching(Sink):
            __slots__ = ()

            def CONNECT(self) -> Any:
                (protocol,) = factory.connections
                protocols.append(protocol)
                return super().CONNECT()

        factory = ESMTPFactory(Watching, hostname="mx.example.test")
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        portNumber = port.getHost().port

        def client() -> list[int]:
            codes: list[int] = []
            with socket.create_connection((LOOPBACK, portNumber), timeout=10) as sock:
                codes += [r.code for r in readReplies(sock, 1)[0]]
                sock.sendall(b"EHLO c.example\r\n")
                codes += [r.code for r in readReplies(sock, 1)[0]]
                sock.sendall(
                    b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
                )
                codes += [r.code for r in readReplies(sock, 2)[0]]
                sock.sendall(b"DATA\r\n")
                codes += [r.code for r in readReplies(sock, 1)[0]]
                sock.sendall(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
                codes += [r.code for r in readReplies(sock, 2)[0]]
            return codes

        self.assertEqual(
            await deferToThread(client), [220, 250, 250, 250, 354, 250, 221]
        )
        (protocol,) = protocols
        self.assertTrue(verifyObject(IProtocol, protocol))
        self.assertTrue(verifyObject(ILoggingContext, protocol))
        self.assertFalse(hasattr(protocol, "__dict__"))
        self.assertFalse(hasattr(protocol.handler, "__dict__"))
        self.assertIs(protocol.factory, factory)
        self.assertEqual(protocol.session.messages, 1)
        await waitUntil(lambda: not factory.connections, timeout=10)
