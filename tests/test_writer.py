"""
Tests for L{esmtpkit.io.writer.ReplyWriter}: reply bytes collected while a read
is handled, written at the end of the reactor turn straight to the socket,
and to the transport once the socket does not take everything.
"""

from __future__ import annotations

import errno
import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from esmtpkit.io.batch import OutputBatch
from esmtpkit.io.writer import ReplyWriter, directSocket

FULL = "full"
SHORT = "short"
EAGAIN = "eagain"
BROKEN = "broken"
PIPE = "pipe"


class FakeSocket:
    """
    A socket whose C{send} does what it is told: take everything (L{FULL}),
    at most C{short} bytes (L{SHORT}), or raise C{BlockingIOError}
    (L{EAGAIN}), C{ConnectionResetError} (L{BROKEN}) or C{BrokenPipeError}
    (L{PIPE}).

    @ivar accepted: everything taken, in order.
    @ivar sends: how many times C{send} was called.
    """

    def __init__(self, log: list[FakeSocket] | None = None) -> None:
        self.log = log
        self.mode = FULL
        self.short = 0
        self.accepted = b""
        self.sends = 0

    def send(self, data: bytes, /) -> int:
        self.sends += 1
        if self.log is not None:
            self.log.append(self)
        if self.mode == EAGAIN:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if self.mode == BROKEN:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        if self.mode == PIPE:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        taken = len(data) if self.mode == FULL else min(self.short, len(data))
        self.accepted += data[:taken]
        return taken


class FakeTCPTransport(StringTransport):
    """
    The transport a plain TCP connection falls back to: what the socket did
    not take. Like a L{twisted.internet.tcp.Connection}, it has the
    C{reactor} the writer's batch waits on.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        super().__init__()
        self.reactor = reactor


class WriterTestsMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.batch = OutputBatch()
        self.sock = FakeSocket()
        self.transport = FakeTCPTransport(self.clock)
        self.writer = ReplyWriter(self.transport, self.batch, sock=self.sock)


class DirectTests(WriterTestsMixin, SynchronousTestCase):
    """
    A writer on the direct path (a socket and a batch).
    """

    def test_endOfTurn(self) -> None:
        """
        A write goes to the socket once the reactor turn is over, not
        before, and not through the transport.
        """
        self.assertTrue(self.writer.direct)
        self.writer.write(b"250 OK\r\n")
        self.assertEqual((self.sock.sends, self.transport.value()), (0, b""))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.sock.accepted, b"250 OK\r\n")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.writer.direct)

    def test_oneSend(self) -> None:
        """
        Everything written while the writer is held, and after its release
        until the end of the turn, goes to the socket in one send.
        """
        self.assertTrue(self.writer.hold())
        self.writer.write(b"250 a\r\n")
        self.writer.write(b"250 b\r\n")
        self.writer.release()
        self.writer.write(b"250 c\r\n")
        self.assertEqual(self.sock.sends, 0)
        self.clock.advance(0)
        self.assertEqual(self.sock.sends, 1)
        self.assertEqual(self.sock.accepted, b"250 a\r\n250 b\r\n250 c\r\n")

    def test_holdWhileWaiting(self) -> None:
        """
        While bytes wait for the end of the turn, L{ReplyWriter.hold}
        returns L{False}: the batch writes what comes next with them.
        """
        self.writer.write(b"a")
        self.assertFalse(self.writer.hold())
        self.writer.write(b"b")
        self.clock.advance(0)
        self.assertEqual((self.sock.sends, self.sock.accepted), (1, b"ab"))
        self.assertTrue(self.writer.hold())

    def test_releaseEmpty(self) -> None:
        """
        A release with nothing written schedules nothing.
        """
        self.assertTrue(self.writer.hold())
        self.writer.release()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.writer.hold())

    def test_reentrantHold(self) -> None:
        """
        A hold inside a hold returns L{False}; its scope ends without a
        release (the outer one releases), so nothing is written until the
        outer release and the end of the turn.
        """
        self.assertTrue(self.writer.hold())
        self.writer.write(b"a")
        self.assertFalse(self.writer.hold())
        self.writer.write(b"b")
        # (the inner scope ends here: it got False, so it does not release)
        self.clock.advance(0)
        self.assertEqual((self.sock.sends, self.transport.value()), (0, b""))
        self.writer.write(b"c")
        self.writer.release()
        self.assertEqual(self.sock.sends, 0)
        self.clock.advance(0)
        self.assertEqual((self.sock.sends, self.sock.accepted), (1, b"abc"))

    def test_shortSend(self) -> None:
        """
        What a short send leaves goes to the transport, and from then on
        every write does, at once and in order; the socket is not offered
        anything again.
        """
        self.sock.mode, self.sock.short = SHORT, 3
        self.writer.write(b"250 first\r\n")
        self.clock.advance(0)
        self.assertEqual(self.sock.accepted, b"250")
        self.assertEqual(self.transport.value(), b" first\r\n")
        self.assertFalse(self.writer.direct)
        self.sock.mode = FULL
        self.writer.write(b"250 second\r\n")
        self.assertEqual(self.transport.value(), b" first\r\n250 second\r\n")
        self.assertTrue(self.writer.hold())
        self.writer.write(b"250 third\r\n")
        self.writer.release()
        self.assertEqual(
            self.transport.value(), b" first\r\n250 second\r\n250 third\r\n"
        )
        self.assertEqual(self.sock.sends, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def assertFallsBack(self, mode: str) -> None:
        self.sock.mode = mode
        self.writer.write(b"250 first\r\n")
        self.clock.advance(0)
        self.assertEqual(self.sock.accepted, b"")
        self.assertEqual(self.transport.value(), b"250 first\r\n")
        self.sock.mode = FULL
        self.writer.write(b"250 second\r\n")
        self.clock.advance(0)
        self.assertEqual(self.sock.accepted, b"")
        self.assertEqual(self.transport.value(), b"250 first\r\n250 second\r\n")
        self.assertEqual(self.sock.sends, 1)

    def test_eagain(self) -> None:
        """
        A socket whose buffer is full (C{EAGAIN}) on the first send: that
        and every later write go to the transport.
        """
        self.assertFallsBack(EAGAIN)

    def test_reset(self) -> None:
        """
        A send that fails with C{ECONNRESET}: that and every later write go
        to the transport, which finds out about the connection on its own.
        """
        self.assertFallsBack(BROKEN)

    def test_brokenPipe(self) -> None:
        """
        A send that fails with C{EPIPE} falls back the same way.
        """
        self.assertFallsBack(PIPE)

    def test_zeroSent(self) -> None:
        """
        A send that takes nothing falls back like one that raises.
        """
        self.sock.short = 0
        self.assertFallsBack(SHORT)

    def test_stopDirect(self) -> None:
        """
        L{ReplyWriter.stopDirect} writes what was collected first, to the
        socket; everything later goes to the transport, at once.
        """
        self.assertTrue(self.writer.hold())
        self.writer.write(b"220 Ready to start TLS\r\n")
        self.writer.stopDirect()
        self.assertEqual(self.sock.accepted, b"220 Ready to start TLS\r\n")
        self.assertFalse(self.writer.direct)
        self.writer.write(b"250 over TLS\r\n")
        self.assertEqual(self.transport.value(), b"250 over TLS\r\n")
        self.writer.release()
        self.clock.advance(0)
        self.assertEqual(self.sock.sends, 1)
        self.assertEqual(self.transport.value(), b"250 over TLS\r\n")

    def test_flush(self) -> None:
        """
        L{ReplyWriter.flush} writes now, in one send; the batch then finds
        nothing left.
        """
        self.writer.write(b"221 a\r\n")
        self.writer.write(b"221 b\r\n")
        self.writer.flush()
        self.assertEqual(
            (self.sock.sends, self.sock.accepted), (1, b"221 a\r\n221 b\r\n")
        )
        self.clock.advance(0)
        self.assertEqual(self.sock.sends, 1)

    def test_discard(self) -> None:
        """
        After L{ReplyWriter.discard}, what waited is dropped (the batch,
        at the end of the turn, writes nothing) and later writes too.
        """
        self.writer.write(b"250 lost\r\n")
        self.writer.discard()
        self.clock.advance(0)
        self.writer.write(b"250 ignored\r\n")
        self.assertTrue(self.writer.hold())
        self.writer.write(b"250 ignored too\r\n")
        self.writer.release()
        self.writer.flush()
        self.writer.stopDirect()
        self.clock.advance(0)
        self.assertEqual((self.sock.sends, self.transport.value()), (0, b""))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_batchesConnections(self) -> None:
        """
        Writers on the same batch are written in one delayed call, each in
        the order its first bytes were released.
        """
        order: list[FakeSocket] = []
        first, second = FakeSocket(order), FakeSocket(order)
        a = ReplyWriter(FakeTCPTransport(self.clock), self.batch, sock=first)
        b = ReplyWriter(FakeTCPTransport(self.clock), self.batch, sock=second)
        b.write(b"b")
        a.write(b"a")
        b.write(b"b")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(order, [second, first])
        self.assertEqual((first.accepted, second.accepted), (b"a", b"bb"))


class RealSocketTests(SynchronousTestCase):
    """
    L{directSocket} and the direct path on a real L{tcp.Connection} (one
    end of a socket pair, its reactor a L{Clock}).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        # (a Clock is no IReactorFDSet: nothing here makes it watch the socket)
        self.connection = tcp.Connection(ours, Protocol(), self.clock)  # type: ignore[arg-type]

    def test_directSocket(self) -> None:
        """
        A plain TCP connection's socket is written to directly.
        """
        self.assertIs(directSocket(self.connection), self.connection.getHandle())
        writer = ReplyWriter(self.connection, OutputBatch())
        self.assertTrue(writer.direct)
        writer.write(b"250 OK\r\n")
        self.clock.advance(0)
        self.assertEqual(self.peer.recv(100), b"250 OK\r\n")

    def test_tls(self) -> None:
        """
        A TCP connection with TLS on is not written to directly.
        """
        directlyProvides(self.connection, ISSLTransport)
        self.assertIsNone(directSocket(self.connection))
        self.assertFalse(ReplyWriter(self.connection, OutputBatch()).direct)


class IndirectTests(WriterTestsMixin, SynchronousTestCase):
    """
    A writer without the direct path writes to the transport at release.
    """

    def test_notTCP(self) -> None:
        """
        On a transport that is not a plain TCP connection, even with a
        batch, writes go to the transport at release, without a delayed
        call.
        """
        transport = StringTransport()
        self.assertIsNone(directSocket(transport))
        writer = ReplyWriter(transport, self.batch)
        self.assertFalse(writer.direct)
        self.assertTrue(writer.hold())
        writer.write(b"250 a\r\n")
        writer.write(b"250 b\r\n")
        self.assertEqual(transport.value(), b"")
        writer.release()
        self.assertEqual(transport.value(), b"250 a\r\n250 b\r\n")
        writer.write(b"250 c\r\n")
        self.assertEqual(transport.value(), b"250 a\r\n250 b\r\n250 c\r\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noBatch(self) -> None:
        """
        Without a batch, a socket given is not used: writes go to the
        transport at release.
        """
        writer = ReplyWriter(self.transport, None, sock=self.sock)
        self.assertFalse(writer.direct)
        writer.write(b"250 OK\r\n")
        self.assertEqual(self.transport.value(), b"250 OK\r\n")
        self.assertEqual((self.sock.sends, self.clock.getDelayedCalls()), (0, []))

    def test_reentrantHold(self) -> None:
        """
        A nested hold returns L{False} and writes nothing when its scope
        ends; the outer release writes everything, in one write.
        """
        transport = StringTransport()
        writes: list[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        writer = ReplyWriter(transport, None)
        self.assertTrue(writer.hold())
        self.assertFalse(writer.hold())  # nested before anything is written
        writer.write(b"a")
        self.assertFalse(writer.hold())
        writer.write(b"b")
        self.assertEqual(writes, [])
        writer.release()
        self.assertEqual(writes, [b"ab"])

    def test_discard(self) -> None:
        """
        A discarded writer writes nothing, held or not.
        """
        transport = StringTransport()
        writer = ReplyWriter(transport, None)
        writer.hold()
        writer.write(b"lost")
        writer.discard()
        writer.release()
        writer.write(b"ignored")
        self.assertEqual(transport.value(), b"")

    def test_slots(self) -> None:
        """
        A writer has no __dict__, and few slots.
        """
        writer = ReplyWriter(StringTransport(), None)
        self.assertFalse(hasattr(writer, "__dict__"))
        self.assertLessEqual(len(ReplyWriter.__slots__), 4)


# -- the property: every byte written arrives once, in order ----------------


def _weighted(
    *choices: tuple[int, st.SearchStrategy[tuple[object, ...]]],
) -> st.SearchStrategy[tuple[object, ...]]:
    return st.one_of(*(strategy for weight, strategy in choices for _ in range(weight)))


_operations = st.lists(
    _weighted(
        (6, st.tuples(st.just("write"), st.binary(min_size=0, max_size=12))),
        (4, st.tuples(st.just("advance"))),
        (2, st.tuples(st.just("hold"))),
        (3, st.tuples(st.just("release"))),
        (3, st.tuples(st.just("short"), st.integers(min_value=0, max_value=8))),
        (2, st.tuples(st.just("socket"), st.just(FULL))),
        (1, st.tuples(st.just("socket"), st.sampled_from([EAGAIN, BROKEN, PIPE]))),
        (1, st.tuples(st.just("flush"))),
    ),
    min_size=10,
    max_size=80,
)
# Where the one stopDirect goes (STARTTLS happens once), if anywhere.
_stopDirectAt = st.one_of(st.none(), st.integers(min_value=0, max_value=80))


class Run:
    """
    One writer driven by the operations, its holds nested the way a
    protocol nests them: a release only for a hold that returned L{True}.
    """

    def __init__(
        self, writer: ReplyWriter, transport: StringTransport, sock: FakeSocket | None
    ) -> None:
        self.writer = writer
        self.transport = transport
        self.sock = sock
        self.holds: list[bool] = []

    def out(self) -> bytes:
        accepted = self.sock.accepted if self.sock is not None else b""
        sent: bytes = self.transport.value()
        return accepted + sent

    def apply(self, op: tuple[object, ...]) -> None:
        name = op[0]
        if name == "write":
            assert isinstance(op[1], bytes)
            self.writer.write(op[1])
        elif name == "hold":
            self.holds.append(self.writer.hold())
        elif name == "release":
            if self.holds and self.holds.pop():
                self.writer.release()
        elif name == "flush":
            self.writer.flush()
        elif name == "stopDirect":
            self.writer.stopDirect()


@settings(max_examples=200, deadline=None)
@given(_operations, _stopDirectAt)
def test_everyByteOnceInOrder(
    operations: list[tuple[object, ...]], stopDirectAt: int | None
) -> None:
    """
    Whatever the operations and however the socket behaves, what the socket
    took followed by what the transport got is exactly what was written:
    the socket never takes anything once the transport has got something,
    and takes it only at the end of the turn, a flush or a stopDirect. A
    writer on a transport without the direct path writes the same bytes.
    """
    clock = Clock()
    batch = OutputBatch()
    sock = FakeSocket()
    tcpTransport = FakeTCPTransport(clock)
    direct = Run(ReplyWriter(tcpTransport, batch, sock=sock), tcpTransport, sock)
    plainTransport = StringTransport()
    plain = Run(ReplyWriter(plainTransport, batch), plainTransport, None)
    if stopDirectAt is not None:
        operations.insert(stopDirectAt, ("stopDirect",))
    written = b""
    for op in operations:
        name = op[0]
        accepted = sock.accepted
        fellBack = bool(tcpTransport.value())
        if name == "write":
            assert isinstance(op[1], bytes)
            written += op[1]
        elif name == "socket":
            assert isinstance(op[1], str)
            sock.mode = op[1]
        elif name == "short":
            assert isinstance(op[1], int)
            sock.mode, sock.short = SHORT, op[1]
        elif name == "advance":
            clock.advance(0)
        direct.apply(op)
        plain.apply(op)
        if name not in ("advance", "flush", "stopDirect"):
            assert sock.accepted == accepted
        if fellBack:
            assert sock.accepted == accepted
        for run in (direct, plain):
            assert written.startswith(run.out())
        if not plain.holds:
            assert plain.out() == written
        if not direct.holds and name == "advance":
            assert direct.out() == written
        if name in ("flush", "stopDirect"):
            # Nothing waits, even while held.
            assert direct.out() == plain.out() == written
    # The protocol's outer calls end with a release.
    accepted = sock.accepted
    fellBack = bool(tcpTransport.value())
    for run in (direct, plain):
        while run.holds:
            run.apply(("release",))
    clock.advance(0)
    if fellBack:
        assert sock.accepted == accepted
    assert direct.out() == written
    assert plain.out() == written
    assert plainTransport.value() == written
    assert clock.getDelayedCalls() == []


# -- the property: handle() is hold, the call, release ----------------------

# A read: what the protocol does while it handles it (writes, reads nested in
# it, a flush, a stopDirect, the socket changing its behaviour).
_readOps = st.recursive(
    _weighted(
        (6, st.tuples(st.just("write"), st.binary(min_size=0, max_size=12))),
        (1, st.tuples(st.just("flush"))),
        (1, st.tuples(st.just("stopDirect"))),
        (1, st.tuples(st.just("discard"))),
        (2, st.tuples(st.just("short"), st.integers(min_value=0, max_value=8))),
        (1, st.tuples(st.just("socket"), st.sampled_from([FULL, EAGAIN, BROKEN]))),
    ),
    lambda inner: st.tuples(st.just("read"), st.lists(inner, max_size=6)),
    max_leaves=30,
)
_reads = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.lists(_readOps, max_size=8)),
        st.tuples(st.just("write"), st.binary(min_size=1, max_size=12)),
        st.tuples(st.just("advance")),
    ),
    min_size=1,
    max_size=20,
)


class Reads:
    """
    One writer on the direct path, whose reads are handled either with
    L{ReplyWriter.hold} and L{ReplyWriter.release} (as the protocol did
    before L{ReplyWriter.handle}) or with C{handle}.
    """

    def __init__(self, useHandle: bool) -> None:
        self.useHandle = useHandle
        self.clock = Clock()
        self.sock = FakeSocket()
        self.transport = FakeTCPTransport(self.clock)
        self.writer = ReplyWriter(self.transport, OutputBatch(), sock=self.sock)
        self.trace: list[object] = []

    def observe(self) -> None:
        self.trace.append(
            (
                self.sock.accepted,
                self.sock.sends,
                self.transport.value(),
                len(self.clock.getDelayedCalls()),
                self.writer.direct,
            )
        )

    def apply(self, op: tuple[object, ...]) -> None:
        name, writer = op[0], self.writer
        if name == "write":
            assert isinstance(op[1], bytes)
            writer.write(op[1])
        elif name == "advance":
            self.clock.advance(0)
        elif name == "flush":
            writer.flush()
        elif name == "stopDirect":
            writer.stopDirect()
        elif name == "discard":
            writer.discard()
        elif name == "short":
            assert isinstance(op[1], int)
            self.sock.mode, self.sock.short = SHORT, op[1]
        elif name == "socket":
            assert isinstance(op[1], str)
            self.sock.mode = op[1]
        elif name == "read":
            assert isinstance(op[1], list)
            self.read(op[1])
        self.observe()

    def handleRead(self, ops: list[tuple[object, ...]]) -> None:
        for op in ops:
            self.apply(op)

    def read(self, ops: list[tuple[object, ...]]) -> None:
        if self.useHandle:
            self.writer.handle(Reads.handleRead, self, ops)  # type: ignore[arg-type]
        elif self.writer.hold():
            try:
                self.handleRead(ops)
            finally:
                self.writer.release()
        else:
            self.handleRead(ops)


@settings(max_examples=300, deadline=None)
@given(_reads)
def test_handleIsHoldAndRelease(reads: list[tuple[object, ...]]) -> None:
    """
    L{ReplyWriter.handle} (the protocol's one call per read) has exactly the
    effect of a L{ReplyWriter.hold}, the call, and a L{ReplyWriter.release}
    when the hold returned L{True}: after every operation, nested reads
    included, the socket has taken the same bytes in as many sends, the
    transport has the same bytes, the same calls wait for the end of the
    turn, and the direct path is on or off alike.
    """
    general, fast = Reads(useHandle=False), Reads(useHandle=True)
    for op in [*reads, ("advance",)]:
        general.apply(op)
        fast.apply(op)
    assert fast.trace == general.trace
    assert fast.clock.getDelayedCalls() == []


def test_handleRaises() -> None:
    """
    When the read's handler raises, L{ReplyWriter.handle} still releases:
    what was written goes out at the end of the turn, and the error reaches
    the caller.
    """
    run = Reads(useHandle=True)

    def boom(owner: Reads, data: bytes) -> None:
        owner.writer.write(data)
        raise ZeroDivisionError()

    try:
        run.writer.handle(boom, run, b"250 OK\r\n")
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("the error was swallowed")
    run.clock.advance(0)
    assert run.sock.accepted == b"250 OK\r\n"
    assert run.writer.hold()
