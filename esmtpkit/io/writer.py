"""
L{ReplyWriter}: the output side of one connection.

The protocol hands the writer the bytes of its replies (formatted by
L{Reply.toBytes <esmtpkit.reply.Reply.toBytes>}); the writer decides when
and how they reach the client:

  - While the connection handles a read (between L{ReplyWriter.hold} and
    L{ReplyWriter.release}), the replies it makes are collected, and go out
    together, in one write.

  - On a plain TCP connection they wait for the end of the reactor turn,
    with the replies of every other connection (L{OutputBatch}), and are
    then offered to the socket directly. A short reply almost always fits
    in the socket's buffer; written there, it spares the reactor watching
    the socket for writability and writing it on a later turn (two
    C{epoll_ctl} calls and a loop iteration per reply, the largest cost of
    a short SMTP exchange).

  - The first time the socket does not take everything (a short send,
    C{EAGAIN}, any other error), the rest goes to the transport, and so
    does every later write: the transport's buffer is then the only queue,
    and nothing is ever reordered. On any other transport (TLS, in-memory),
    everything goes to the transport, at release.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport, ITransport

if TYPE_CHECKING:
    from collections.abc import Callable

    from .batch import OutputBatch

__all__ = ["ReplyWriter", "SocketLike", "directSocket"]


class SocketLike(Protocol):
    """
    What the writer needs of a socket: a non-blocking C{send}.
    """

    def send(self, data: bytes, /) -> int:
        """
        Send what fits of C{data} now; return how many bytes were taken.

        @raise OSError: nothing could be sent (C{BlockingIOError} when the
            buffer is full, or the connection is broken).
        """


def directSocket(transport: object) -> SocketLike | None:
    """
    The socket a L{ReplyWriter} may write to directly for C{transport}: the
    one of a plain (not TLS) L{twisted.internet.tcp.Connection}, else
    L{None}.
    """
    if isinstance(transport, tcp.Connection) and not ISSLTransport.providedBy(
        transport
    ):
        sock: SocketLike = transport.getHandle()
        return sock
    return None


class _Gone:
    """
    The transport of a discarded writer: writes go nowhere.
    """

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass


_GONE = _Gone()


class ReplyWriter:
    """
    The output side of one connection: reply bytes in, socket/transport
    writes out.

    States, all in C{_outgoing}: L{None} when idle; a list of bytes while
    collecting, that is while someone holds the writer (L{hold}) or, after
    L{release}, while it waits in the L{OutputBatch} (the batch's L{flush}
    is then the release). C{_socket} and C{_batch} are both set (the direct
    path) or both L{None}.

    Usage, for each read::

        writer.handle(receive, protocol, data)  # receive calls writer.write

    which is, in one call::

        if writer.hold():
            try:
                receive(protocol, data)
            finally:
                writer.release()
        else:
            receive(protocol, data)  # an outer hold, or the batch, writes these
    """

    # An idle connection keeps its writer: four slots, no __dict__.
    __slots__ = ("_transport", "_socket", "_batch", "_outgoing")

    def __init__(
        self,
        transport: ITransport,
        batch: OutputBatch | None,
        sock: SocketLike | None = None,
    ) -> None:
        """
        @param transport: where the bytes go, unless the socket takes them.
        @param batch: the end-of-turn batch; without it there is no direct
            path, and every release writes at once.
        @param sock: the socket to write to directly, for a transport whose
            socket L{directSocket} does not find (tests give a fake one:
            the transport must then have the batch's C{reactor} attribute,
            as a L{tcp.Connection} has). By default, C{directSocket
            (transport)}. Ignored without C{batch}.
        """
        if batch is not None and sock is None:
            sock = directSocket(transport)
        self._transport = transport
        if batch is None or sock is None:
            self._socket: SocketLike | None = None
            self._batch: OutputBatch | None = None
        else:
            self._socket = sock
            self._batch = batch
        self._outgoing: list[bytes] | None = None

    @property
    def direct(self) -> bool:
        """
        Whether the next write may still go to the socket directly.
        """
        return self._socket is not None

    def hold(self) -> bool:
        """
        Start collecting: the connection is handling a read, and every reply
        it makes meanwhile goes out together, at L{release}.

        @return: L{False} if bytes are being collected already (an outer
            hold, or they wait for the end of the turn): whoever collects
            them writes these too, and the caller must not call L{release}.
        """
        if self._outgoing is not None:
            return False
        self._outgoing = []
        return True

    def release(self) -> None:
        """
        Stop collecting (after a L{hold} that returned L{True}): on the
        direct path, the bytes collected go out at the end of this reactor
        turn, with other connections' (more may join them until then);
        otherwise, now.
        """
        batch = self._batch
        if batch is not None and self._outgoing:
            batch.add(self, self._transport.reactor)  # type: ignore[attr-defined]
        else:
            self.flush()

    def handle(
        self, receive: Callable[[Any, bytes], None], owner: Any, data: bytes
    ) -> None:
        """
        Call C{receive(owner, data)} with the writer held: a L{hold}, the
        call, and (if the hold returned L{True}) a L{release}, in one call.
        """
        if self._outgoing is not None:
            receive(owner, data)  # an outer hold, or the batch, writes these
            return
        self._outgoing = []
        try:
            receive(owner, data)
        finally:
            # release(), inline (this runs for every read).
            batch = self._batch
            if batch is not None and self._outgoing:
                batch.add(self, self._transport.reactor)  # type: ignore[attr-defined]
            else:
                self.flush()

    def write(self, data: bytes) -> None:
        """
        Write the bytes of a reply, after those already waiting: collected if
        the writer is held (or waiting for the end of the turn); otherwise
        as a L{hold}, write, L{release}.
        """
        outgoing = self._outgoing
        if outgoing is not None:
            outgoing.append(data)
        else:
            self._outgoing = [data]
            self.release()

    def flush(self) -> None:
        """
        Write everything collected, now, and stop collecting (the end of the
        turn; STARTTLS, before the handshake; closing). On the direct path
        the socket is offered all of it; what it does not take goes to the
        transport, and from then on everything does.
        """
        outgoing, self._outgoing = self._outgoing, None
        if not outgoing:
            return
        data = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
        sock = self._socket
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:  # EAGAIN, or broken: the transport will see
                sent = 0
            if sent == len(data):
                return
            self._socket = self._batch = None
            data = data[sent:]
        self._transport.write(data)

    def stopDirect(self) -> None:
        """
        Flush, then never use the socket directly again (STARTTLS: what
        follows goes through TLS, that is through the transport).
        """
        self.flush()
        self._socket = self._batch = None

    def discard(self) -> None:
        """
        The connection is gone: drop what waits, and ignore every later
        write (a batch still holding the writer flushes nothing).
        """
        self._outgoing = None
        self._socket = self._batch = None
        self._transport = _GONE  # type: ignore[assignment]
