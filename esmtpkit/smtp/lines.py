"""
L{PushbackLineReceiver}: a line receiver in the manner of Twisted's
L{LineReceiver <twisted.protocols.basic.LineReceiver>}, with a reading loop
in which line mode and raw mode can hand bytes back to each other at any
point, and with every attribute in a slot.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ILoggingContext, IProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["PushbackLineReceiver"]


@implementer(IProtocol, ILoggingContext)
class PushbackLineReceiver:
    """
    A protocol that reads lines and raw data, whose callbacks may put bytes
    back in front of the unread input with L{pushBack} (C{setLineMode(extra)}
    does so too, from any callback), and whose loop stops at once when
    C{paused} is set or the connection is closing.

    It provides what Twisted expects of a protocol (L{IProtocol},
    L{ILoggingContext}, the C{transport}, C{connected} and C{factory}
    attributes, the push producer methods) and what esmtpkit uses of
    L{LineReceiver <twisted.protocols.basic.LineReceiver>} (C{line_mode},
    L{setLineMode}, L{setRawMode}, L{clearLineBuffer}, C{delimiter},
    C{MAX_LENGTH}, C{paused}), without inheriting from Twisted's classes:
    they have no C{__slots__}, so each connection would carry a
    C{__dict__}. Differences from L{LineReceiver
    <twisted.protocols.basic.LineReceiver>}:
      - bytes handed back are read next, before later input, so nothing is
        lost or reordered when the mode changes in the middle of a read;
      - L{lineLengthExceeded} is called with the rest of the input and may
        push it back after switching mode (to discard the long line, or to
        read it as raw data), instead of the connection being dropped;
      - a long run of lines in one read is split in linear time.

    Lines end at LF; L{bareLineEnding} tells, while C{lineReceived} runs,
    whether that LF came without the CR that RFC 5321 requires before it
    (the line never includes the line ending). C{MAX_LENGTH} is the longest
    line without its ending.

    A subclass that adds attributes should give them slots too (and set
    every slot in its C{__init__}: a slot has no class default).

    @ivar transport: the transport, once connected (L{makeConnection}).
    @ivar connected: whether L{makeConnection} was called.
    @ivar factory: the factory that built the protocol, or L{None}.
    @ivar line_mode: true while reading lines, false while reading raw.
    @ivar paused: whether reading is held (L{pauseProducing}).
    @ivar MAX_LENGTH: the longest line, without its ending.
    @ivar bareLineEnding: whether the current line ended with a bare LF.
    @ivar moreInput: whether more input had already arrived after the
        current line (the client did not wait for the reply).
    """

    __slots__ = (
        "transport",
        "connected",
        "factory",
        "line_mode",
        "_buffer",
        "_busyReceiving",
        "paused",
        "MAX_LENGTH",
        "bareLineEnding",
        "moreInput",
        "_pushedBack",
        "_closing",
    )

    delimiter = b"\r\n"
    """What L{sendLine} ends a line with."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.connected = 0
        self.factory: Any = None
        self.line_mode = 1
        self._buffer = b""
        self._busyReceiving = False
        self.paused = False
        self.MAX_LENGTH = 16384
        self.bareLineEnding = False
        self.moreInput = False
        self._pushedBack = b""
        self._closing = False  # set once the connection is being closed

    # -- IProtocol, ILoggingContext -------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        """
        The connection is made: remember C{transport}, then
        L{connectionMade}.
        """
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        """
        Called once the connection is made (by L{makeConnection}).
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Called when the connection is gone.
        """

    def logPrefix(self) -> str:
        """
        The prefix of log messages about this connection: the class name.
        """
        return self.__class__.__name__

    # -- input ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._busyReceiving:
            self._buffer += data
            return
        self._busyReceiving = True
        try:
            buf = self._buffer + data if self._buffer else data
            self._buffer = b""
            pos = 0
            size = len(buf)
            while pos < size and not self.paused and not self._closing:
                if self.line_mode:
                    limit = self.MAX_LENGTH + 1
                    end = buf.find(b"\n", pos)
                    if end < 0 or end - pos > limit:
                        if end < 0 and size - pos <= limit:
                            break
                        rest, pos = buf[pos:], size
                        self.lineLengthExceeded(rest)
                    else:
                        if end > pos and buf[end - 1] == 13:
                            line = buf[pos : end - 1]
                            self.bareLineEnding = False
                        else:
                            line = buf[pos:end]
                            self.bareLineEnding = True
                        pos = end + 1
                        self.moreInput = pos < size
                        self.lineReceived(line)
                else:
                    chunk, pos = (buf[pos:] if pos else buf), size
                    self.rawDataReceived(chunk)
                if self._pushedBack or self._buffer:
                    buf = self._pushedBack + buf[pos:] + self._buffer
                    self._pushedBack = self._buffer = b""
                    pos = 0
                    size = len(buf)
            self._buffer = buf[pos:] if pos < size else b""
        finally:
            self._busyReceiving = False

    def lineReceived(self, line: bytes) -> None:
        """
        A line (in line mode), without its line ending.
        """
        raise NotImplementedError

    def rawDataReceived(self, data: bytes) -> None:
        """
        Bytes (in raw mode).
        """
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        The line being read is longer than C{MAX_LENGTH}; C{line} is the
        rest of the input, from its start. By default, close the connection.
        """
        self.transport.loseConnection()

    def pushBack(self, data: bytes) -> None:
        """
        Put C{data} back in front of the input that has not been read yet.
        """
        if not data:
            return
        if self._busyReceiving:
            self._pushedBack = data + self._pushedBack
        else:
            self._buffer = data + self._buffer

    def setLineMode(self, extra: bytes = b"") -> None:
        """
        Switch to line mode; C{extra} (bytes a raw-mode callback did not
        consume) is read next, as lines.
        """
        self.line_mode = 1
        self.pushBack(extra)

    def setRawMode(self) -> None:
        """
        Switch to raw mode: input goes to L{rawDataReceived}.
        """
        self.line_mode = 0

    def clearLineBuffer(self) -> bytes:
        """
        Drop the input received but not read yet, and return it. Only
        between reads: a callback that wants the rest of the input gone
        switches to raw mode and ignores what L{rawDataReceived} gets.

        @raise RuntimeError: called from a callback, during a read.
        """
        if self._busyReceiving:
            raise RuntimeError("clearLineBuffer called during a read")
        buffered, self._buffer = self._buffer, b""
        return buffered

    def sendLine(self, line: bytes) -> None:
        """
        Write C{line} and a C{delimiter}.
        """
        self.transport.write(line + self.delimiter)

    # -- the push producer of the transport's input -----------------------------

    def pauseProducing(self) -> None:
        """
        Read nothing more, and ask the transport to stop reading.
        """
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read again: first what is held, then what the transport reads.
        """
        self.paused = False
        self.transport.resumeProducing()
        self.dataReceived(b"")

    def stopProducing(self) -> None:
        """
        Read nothing more, ever.
        """
        self.paused = True
        self.transport.stopProducing()
