"""
Calling a series of hook methods in order, synchronously while they answer
synchronously, and through a Deferred from the first that does not (the
machinery of L{Chain <esmtpkit.handlers.Chain>}).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

__all__ = ["isAsync", "run"]


def isAsync(value: object) -> bool:
    """
    Whether a hook's result is to be waited for (a Deferred or coroutine).
    """
    return isinstance(value, Deferred) or inspect.iscoroutine(value)


def run(
    calls: Iterator[Callable[..., Any]],
    args: tuple[Any, ...],
    take: Callable[[Any], bool],
    finish: Callable[[], Any],
) -> Any:
    """
    Call each of C{calls} with C{args} in order, giving each answer to
    C{take} until it says the matter is decided; then return C{finish()}.
    Synchronous answers are dealt with at once (no Deferred is made); at the
    first Deferred or coroutine, the rest goes on when it fires, and a
    Deferred is returned (cancelling it cancels the member's).
    """
    for call in calls:
        value = call(*args)
        if isAsync(value):
            return _Pending(ensureDeferred(value), calls, args, take, finish).result
        if take(value):
            break
    return finish()


class _Pending:
    """
    The rest of a L{run} after a member's answer became a Deferred.
    """

    def __init__(
        self,
        first: Deferred[Any],
        calls: Iterator[Callable[..., Any]],
        args: tuple[Any, ...],
        take: Callable[[Any], bool],
        finish: Callable[[], Any],
    ) -> None:
        self.result: Deferred[Any] = Deferred(self._cancel)
        self._current = first
        self._calls = calls
        self._args = args
        self._take = take
        self._finish = finish
        first.addCallbacks(self._answered, self._failed)

    def _cancel(self, result: Deferred[Any]) -> None:
        self._current.cancel()

    def _failed(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    def _answered(self, value: Any) -> None:
        if self.result.called:
            return  # cancelled meanwhile
        try:
            if not self._take(value):
                for call in self._calls:
                    value = call(*self._args)
                    if isAsync(value):
                        self._current = ensureDeferred(value)
                        self._current.addCallbacks(self._answered, self._failed)
                        return
                    if self._take(value):
                        break
            outcome = self._finish()
        except Exception:
            self.result.errback(Failure())
            return
        self.result.callback(outcome)
