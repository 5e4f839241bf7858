"""
What reads a connection's input instead of the command parser for a while
(L{Reader}: message content, a SASL exchange), and L{LineSkipper}, which
throws away the rest of an over-long line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..reply import Reply
    from .connection import SMTPConnection

__all__ = ["Reader", "LineSkipper"]


class Reader(Protocol):
    """
    What reads input instead of the command parser for a while.
    """

    def lineReceived(self, line: bytes) -> None:
        """
        A line (in line mode), without its line ending.
        """

    def rawDataReceived(self, data: bytes) -> None:
        """
        Bytes (in raw mode).
        """

    def lineTooLong(self) -> bool:
        """
        The line being read is longer than C{MAX_LENGTH}; return whether the
        reader dealt with it (else the rest of the line is skipped and
        answered with 500 5.5.6).
        """


class LineSkipper:
    """
    Throws away the rest of an over-long line, then answers it with
    C{reply} and gives the input back to the reader before it.
    """

    __slots__ = ("_wire", "_resume", "_heldCR", "_reply")

    def __init__(
        self, wire: SMTPConnection, resume: Reader | None, reply: Reply
    ) -> None:
        self._wire = wire
        self._resume = resume
        self._heldCR = False
        self._reply = reply

    def lineReceived(self, line: bytes) -> None:
        raise AssertionError("an over-long line is skipped raw")

    def lineTooLong(self) -> bool:
        return True

    def rawDataReceived(self, data: bytes) -> None:
        buf = b"\r" + data if self._heldCR else data
        end = buf.find(b"\n")
        if end < 0:
            self._heldCR = buf.endswith(b"\r")
            return
        wire = self._wire
        if self._resume is None:
            wire.readerDone()
        else:
            wire.readWith(self._resume, raw=False)
        wire.setLineMode(buf[end + 1 :])
        wire.writeReply(self._reply)
