"""
Tests for L{esmtpkit.io.batch.OutputBatch}: replies written at the end of the
reactor turn.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit.io.batch import OutputBatch


class FakeSender:
    def __init__(self, name: str, flushed: list[str]) -> None:
        self.name = name
        self.flushed = flushed

    def flush(self) -> None:
        self.flushed.append(self.name)


class OutputBatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.flushed: list[str] = []
        self.batch = OutputBatch()

    def sender(self, name: str) -> FakeSender:
        return FakeSender(name, self.flushed)

    def test_endOfTurn(self) -> None:
        """
        Nothing is written while the turn goes on; once it is over, every
        sender added is flushed once, in the order they were first added.
        """
        a, b = self.sender("a"), self.sender("b")
        self.batch.add(a, self.clock)
        self.batch.add(b, self.clock)
        self.batch.add(a, self.clock)
        self.assertEqual(self.flushed, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.flushed, ["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nextTurn(self) -> None:
        """
        A sender added while the batch is being written, or after, is
        written by a later call, not lost.
        """
        a = self.sender("a")
        later = self.sender("later")

        class Chaining(FakeSender):
            def flush(inner) -> None:
                super().flush()
                self.batch.add(later, self.clock)

        self.batch.add(Chaining("chain", self.flushed), self.clock)
        self.clock.advance(0)
        self.assertEqual(self.flushed, ["chain", "later"])
        self.batch.add(a, self.clock)
        self.assertEqual(self.flushed, ["chain", "later"])
        self.clock.advance(0)
        self.assertEqual(self.flushed, ["chain", "later", "a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
