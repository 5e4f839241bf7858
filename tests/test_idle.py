"""
Tests for L{esmtpkit.server.idle.IdleTimer}: one timer for every connection's idle
timeout.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler
from esmtpkit.server.idle import IdleTimer
from esmtpkit.testing import SMTPTestConnection


class FakeConnection:
    def __init__(self, clock: Clock, timedOut: list[tuple[str, float]], name: str):
        self.idleSince: float | None = None
        self.clock = clock
        self.timedOut = timedOut
        self.name = name

    def timeoutConnection(self) -> None:
        self.timedOut.append((self.name, self.clock.seconds()))


class IdleTimerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.timedOut: list[tuple[str, float]] = []
        self.connections: list[FakeConnection] = []
        self.timer = IdleTimer(self.clock, 30, self.connections)

    def connection(self, name: str) -> FakeConnection:
        connection = FakeConnection(self.clock, self.timedOut, name)
        self.connections.append(connection)
        return connection

    def test_oneTimerForAll(self) -> None:
        """
        However many connections are watched, one call is scheduled.
        """
        for n in range(100):
            self.timer.start(self.connection(str(n)))
            self.clock.advance(0.1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_exactTimeout(self) -> None:
        """
        A lone connection times out the moment its silence reaches the
        timeout, not before.
        """
        self.timer.start(self.connection("a"))
        self.clock.advance(29.99)
        self.assertEqual(self.timedOut, [])
        self.clock.advance(0.01)
        self.assertEqual(len(self.timedOut), 1)
        self.assertAlmostEqual(self.timedOut[0][1], 30.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_activityPostpones(self) -> None:
        """
        Setting C{idleSince} to the current time restarts the connection's
        count; the timer, due earlier, finds it still has time and waits.
        """
        a = self.connection("a")
        self.timer.start(a)
        self.clock.advance(20)
        a.idleSince = self.clock.seconds()
        self.clock.advance(10)
        self.assertEqual(self.timedOut, [])
        self.clock.advance(19)
        self.assertEqual(self.timedOut, [])
        self.clock.advance(1)
        self.assertEqual(self.timedOut, [("a", 50.0)])

    def test_stoppedNotTimedOut(self) -> None:
        """
        A connection whose C{idleSince} is L{None} is never timed out, and
        with nothing left to watch the timer is not rearmed.
        """
        a = self.connection("a")
        self.timer.start(a)
        a.idleSince = None
        self.clock.advance(100)
        self.assertEqual(self.timedOut, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_eachInTurn(self) -> None:
        """
        Connections started at different times time out in order, each
        at its own time when they are more than the granularity apart.
        """
        for name in "abc":
            self.timer.start(self.connection(name))
            self.clock.advance(5)
        self.clock.pump([1] * 40)
        self.assertEqual(self.timedOut, [("a", 30.0), ("b", 35.0), ("c", 40.0)])

    def test_granularity(self) -> None:
        """
        Timeouts closer together than the granularity (1 s) are handled
        together, at most one second late, so a crowd of connections costs
        at most one pass a second.
        """
        for name in "abcd":
            self.timer.start(self.connection(name))
            self.clock.advance(0.25)
        self.clock.advance(30 - 1)
        self.assertEqual(self.timedOut, [("a", 30.0)])
        self.clock.advance(1)
        self.assertEqual(
            sorted(name for name, _ in self.timedOut), ["a", "b", "c", "d"]
        )
        self.assertEqual(self.timedOut[-1][1], 31.0)

    def test_stop(self) -> None:
        """
        L{IdleTimer.stop} cancels the call; L{IdleTimer.start} arms it again.
        """
        a = self.connection("a")
        self.timer.start(a)
        self.timer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.timer.start(a)
        self.clock.advance(30)
        self.assertEqual(self.timedOut, [("a", 30.0)])


class FactoryIdleTests(SynchronousTestCase):
    def test_timerGoneWithLastConnection(self) -> None:
        """
        When the factory's last connection closes, no idle timer is left
        on the clock.
        """
        conn = SMTPTestConnection(ESMTPHandler, idleTimeout=30)
        conn.command("EHLO client.example")
        self.assertEqual(len(conn.clock.getDelayedCalls()), 1)
        conn.command("QUIT")
        conn.close()
        self.assertEqual(conn.clock.getDelayedCalls(), [])

    def test_manyConnectionsOneTimer(self) -> None:
        """
        Two connections of one factory share its timer, and each is timed
        out after its own silence.
        """
        first = SMTPTestConnection(ESMTPHandler, idleTimeout=30)
        peer = IPv4Address("TCP", "192.0.2.2", 49153)
        transport = StringTransportWithDisconnection(peerAddress=peer)
        second = first.factory.buildProtocol(peer)
        transport.protocol = second
        second.makeConnection(transport)
        first.command("EHLO one.example")
        first.clock.advance(10)
        second.dataReceived(b"EHLO two.example\r\n")
        self.assertEqual(len(first.clock.getDelayedCalls()), 1)
        first.clock.advance(20)
        self.assertTrue(first.closed)
        self.assertIn(b"421 4.4.2", first.transport.value())
        self.assertTrue(transport.connected)
        first.clock.advance(10)
        self.assertFalse(transport.connected)
        self.assertIn(b"421 4.4.2", transport.value())
