"""
L{ReplyWriter}: the output side of one connection, reply bytes in, socket or
transport writes out.

The replies made while one read is handled are collected and written
together. On a plain TCP connection they wait for the end of the reactor
turn (L{OutputBatch}: all connections' replies go out one after another,
which spares the clients a wake-up each), and are then offered to the
socket directly: they almost always fit, and then the reactor does not have
to watch the socket for writability and write on its next turn (two
epoll_ctl calls and a loop iteration per reply, the largest cost of a short
SMTP exchange). The first time the socket does not take all of it, the rest
goes to the transport, and from then on everything does, so nothing is
ever reordered. Any other transport (TLS, unix sockets, test transports) is
written at the end of the read.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from .output import OutputBatch

__all__ = ["ReplyWriter", "directSocket"]


def directSocket(transport: Any) -> Any:
    """
    The socket of C{transport} if replies may be offered to it directly (a
    plain TCP connection), else L{None}.
    """
    if isinstance(transport, tcp.Connection):
        return transport.getHandle()
    return None


class ReplyWriter:
    """
    Writes one connection's replies, in order.
    """

    __slots__ = ("_transport", "_batch", "_socket", "_pending")

    def __init__(
        self, transport: Any, batch: OutputBatch | None, socket: Any = None
    ) -> None:
        """
        @param batch: the batch of the reactor turn; without one, or without
            a socket, output is written when the read is handled.
        @param socket: the socket to offer output to first; by default that
            of C{transport} when it is a plain TCP connection.
        """
        self._transport = transport
        self._batch = batch
        if batch is not None and socket is None:
            socket = directSocket(transport)
        self._socket = socket if batch is not None else None
        # None: not collecting; a list: output collected so far.
        self._pending: list[bytes] | None = None

    def hold(self) -> bool:
        """
        Start collecting (the connection handles a read). Returns L{False}
        when already collecting: then the outer call releases.
        """
        if self._pending is not None:
            return False
        self._pending = []
        return True

    def release(self) -> None:
        """
        Stop collecting: what was collected goes out at the end of the
        reactor turn (direct socket path) or now.
        """
        if self._pending and self._socket is not None:
            self._batch.add(self, self._transport.reactor)  # type: ignore[union-attr]
            return
        self.flush()

    def write(self, data: bytes) -> None:
        """
        Bytes of a reply, after those already waiting.
        """
        if self._pending is not None:
            self._pending.append(data)
        else:
            self._pending = [data]
            self.release()

    def flush(self) -> None:
        """
        Write everything collected, now.
        """
        pending, self._pending = self._pending, None
        if pending:
            self._send(pending[0] if len(pending) == 1 else b"".join(pending))

    def stopDirect(self) -> None:
        """
        Write what waits, then never offer output to the socket again
        (after STARTTLS everything goes through TLS).
        """
        self.flush()
        self._socket = None

    def discard(self) -> None:
        """
        The connection is gone: drop what waits, and never write again.
        """
        self._pending = None
        self._socket = None
        self._transport = None

    def _send(self, data: bytes) -> None:
        sock = self._socket
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            self._socket = None
            data = data[sent:]
        if self._transport is not None:
            self._transport.write(data)
