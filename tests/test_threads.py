"""
Tests for L{esmtpkit.threads}: the runner of handlers' blocking work, and
the per-thread seam that tests and private reactors replace it through.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import threads
from esmtpkit.threads import deferToThread, reactorRunner, runInline, runningWith


def _recording(calls: list[Any]) -> threads.ThreadRunner:
    def runner(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        calls.append((f, args, kwargs))
        return Deferred()

    return runner


class RunInlineTests(SynchronousTestCase):
    """
    L{runInline} calls the function at once.
    """

    def test_result(self) -> None:
        """
        The Deferred has fired with the result.
        """
        self.assertEqual(
            self.successResultOf(runInline(lambda a, b=0: a + b, 1, b=2)), 3
        )

    def test_failure(self) -> None:
        """
        What the function raises fails the Deferred.
        """
        failure = self.failureResultOf(runInline(lambda: 1 / 0))
        failure.trap(ZeroDivisionError)


class RunningWithTests(SynchronousTestCase):
    """
    L{runningWith} gives L{deferToThread} a runner for a block, in the
    calling thread only.
    """

    def test_block(self) -> None:
        """
        Within the block the runner gets the call and its arguments; blocks
        nest, and the previous runner is back afterwards.
        """
        outer: list[Any] = []
        inner: list[Any] = []
        with runningWith(_recording(outer)):
            deferToThread(len, "ab")
            with runningWith(_recording(inner)):
                deferToThread(max, 1, 2, key=abs)
            deferToThread(min, 3)
        self.assertEqual(outer, [(len, ("ab",), {}), (min, (3,), {})])
        self.assertEqual(inner, [(max, (1, 2), {"key": abs})])
        self.assertIsNone(getattr(threads._local, "runner", None))

    def test_restoredAfterAnError(self) -> None:
        """
        A block left by an exception restores the previous runner.
        """
        with self.assertRaises(KeyError):
            with runningWith(runInline):
                raise KeyError("x")
        self.assertIsNone(getattr(threads._local, "runner", None))

    def test_perThread(self) -> None:
        """
        Another thread does not see this thread's runner, and its own
        runner does not leak into this thread.
        """
        mine: list[Any] = []
        theirs: list[Any] = []
        seen: list[Any] = []
        inside = threading.Event()
        checked = threading.Event()

        def other() -> None:
            seen.append(getattr(threads._local, "runner", None))
            with runningWith(_recording(theirs)):
                deferToThread(len, "other")
                inside.set()
                checked.wait(10)

        with runningWith(_recording(mine)):
            thread = threading.Thread(target=other)
            thread.start()
            self.assertTrue(inside.wait(10))
            deferToThread(len, "mine")
            checked.set()
            thread.join(10)
        self.assertFalse(thread.is_alive())
        self.assertEqual(seen, [None])
        self.assertEqual(mine, [(len, ("mine",), {})])
        self.assertEqual(theirs, [(len, ("other",), {})])


class _Pool:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callInThreadWithCallback(
        self, onResult: Any, f: Any, *a: Any, **k: Any
    ) -> None:
        self.calls.append(f)
        try:
            onResult(True, f(*a, **k))
        except BaseException as e:
            onResult(False, e)


class _Reactor:
    def __init__(self) -> None:
        self.pool = _Pool()
        self.fromThread: list[Any] = []

    def getThreadPool(self) -> _Pool:
        return self.pool

    def callFromThread(self, f: Any, *a: Any, **k: Any) -> None:
        self.fromThread.append(f)
        f(*a, **k)


class ReactorRunnerTests(SynchronousTestCase):
    """
    L{reactorRunner} runs work in a given reactor's pool, and hands the
    result back through that reactor's C{callFromThread}.
    """

    def test_ownPool(self) -> None:
        """
        The work runs through the pool; its result comes back through the
        reactor.
        """
        reactor = _Reactor()
        run = reactorRunner(reactor)  # type: ignore[arg-type]
        result = run(sum, [1, 2, 3])
        self.assertEqual(self.successResultOf(result), 6)
        self.assertEqual(reactor.pool.calls, [sum])
        self.assertEqual(len(reactor.fromThread), 1)
