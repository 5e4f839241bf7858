"""
L{PushbackLineReceiver}: Twisted's L{LineReceiver}, with a reading loop in
which line mode and raw mode can hand bytes back to each other at any point.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.basic import LineReceiver

__all__ = ["PushbackLineReceiver"]


class PushbackLineReceiver(LineReceiver):
    """
    A L{LineReceiver} whose callbacks may put bytes back in front of the
    unread input with L{pushBack} (C{setLineMode(extra)} does so too, from
    any callback), and whose loop stops at once when C{paused} is set or the
    connection is closing.

    Differences from L{LineReceiver}, which are why it exists:
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

    @ivar bareLineEnding: whether the current line ended with a bare LF.
    @ivar moreInput: whether more input had already arrived after the
        current line (the client did not wait for the reply).
    """

    delimiter = b"\r\n"
    transport: Any
    bareLineEnding = False
    moreInput = False
    _pushedBack = b""
    _closing = False  # set once the connection is being closed: read no more

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
