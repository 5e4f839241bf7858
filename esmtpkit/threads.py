"""
Where esmtpkit's handlers run blocking work: L{deferToThread}.

A handler that must block (Maildir's C{fsync}) calls L{deferToThread}
instead of Twisted's: by default the two are the same (the reactor's thread
pool), but a test, or a server running on a reactor of its own, can give the
current thread another L{ThreadRunner} with L{runningWith}:

    with runningWith(runInline):
        ...  # deferToThread(f) calls f now and returns a fired Deferred

L{esmtpkit.testing} does this while it drives a connection, so that a
handler's thread work finishes within the test's call; the pytest plugin
gives its server thread a runner for that server's own reactor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.internet import threads
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads

__all__ = [
    "ThreadRunner",
    "deferToThread",
    "runInline",
    "runningWith",
    "reactorRunner",
    "currentRunner",
]

T = TypeVar("T")

ThreadRunner = Callable[..., "Deferred[Any]"]
"""
A callable like L{twisted.internet.threads.deferToThread}: C{runner(f,
*args, **kwargs)} runs C{f(*args, **kwargs)} somewhere and returns a
Deferred that fires, in the reactor thread, with its result or failure.
"""

_local = threading.local()


def deferToThread(f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """
    Run C{f(*args, **kwargs)} in a thread, with the L{ThreadRunner} that
    L{runningWith} gave the calling thread, or else with Twisted's
    L{twisted.internet.threads.deferToThread} (the global reactor's pool).

    @return: a Deferred firing with C{f}'s result, or failing with what it
        raised.
    """
    result: Deferred[T] = currentRunner()(f, *args, **kwargs)
    return result


def currentRunner() -> ThreadRunner:
    """
    The L{ThreadRunner} that L{deferToThread} would use now, in the calling
    thread (Twisted's L{twisted.internet.threads.deferToThread} by default).
    """
    runner: ThreadRunner | None = getattr(_local, "runner", None)
    return threads.deferToThread if runner is None else runner


def runInline(f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """
    The L{ThreadRunner} of tests: call C{f} now, in the calling thread.

    @return: a Deferred that has already fired with C{f}'s result, or failed
        with what it raised.
    """
    try:
        return succeed(f(*args, **kwargs))
    except BaseException:
        return fail()


def reactorRunner(reactor: IReactorThreads | IReactorFromThreads) -> ThreadRunner:
    """
    The L{ThreadRunner} of C{reactor}'s own thread pool, for code that runs
    on a reactor other than the global one.
    """

    def run(f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        pool = reactor.getThreadPool()  # type: ignore[union-attr]
        return threads.deferToThreadPool(reactor, pool, f, *args, **kwargs)  # type: ignore[arg-type]

    return run


@contextmanager
def runningWith(runner: ThreadRunner) -> Iterator[None]:
    """
    Within the block, and in the calling thread only, L{deferToThread} uses
    C{runner}. Blocks nest; the previous runner is back at the end.
    """
    previous = getattr(_local, "runner", None)
    _local.runner = runner
    try:
        yield
    finally:
        _local.runner = previous
