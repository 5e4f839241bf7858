"""
L{HookRunner}: the one place where esmtpkit calls into a handler.

The work that a command causes is a queue of steps. Each step calls at most
one hook. A hook that answers synchronously (the common case) is dealt with
at once and the queue goes on; a hook that returns an unfired Deferred (or a
coroutine that suspends) stops the queue, and the runner asks its owner to
stop reading input, until the Deferred fires. Replies therefore go out in
command order, at most one hook is in flight per connection, and a slow
handler pushes back on the client.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
)
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from ..handler import NO_OPINION, defaultReply
from ..reply import Reply, ReplyError, toReply
from .results import PerRecipient

if TYPE_CHECKING:
    from .conversation import Conversation

__all__ = ["HookRunner", "HOOK_FAILED", "HOOK_TIMEOUT", "SHUTTING_DOWN"]

Step = Callable[[], None]
Done = Callable[[Any], None]

HOOK_FAILED = Reply(451, "Requested action aborted: local error", enhanced="4.3.0")
HOOK_TIMEOUT = Reply(451, "Requested action aborted: timed out", enhanced="4.3.0")
SHUTTING_DOWN = Reply(421, "Service shutting down", enhanced="4.3.2")
"""
What a hook cancelled by the shutdown deadline stands for (never sent: the
connection is closed by then).
"""

_PLAIN_RESULTS = (Reply, tuple)
_ENHANCED_OK = {"MAIL": "2.1.0", "RCPT": "2.1.5", "VRFY": "2.5.0"}


def defaultEnhanced(hook: str, code: int) -> str | None:
    """
    The enhanced status code for a reply to C{hook} that came without one.
    """
    kind = code // 100
    if hook == "CONNECT":
        return None  # RFC 2034: the greeting needs none
    if kind == 2:
        return _ENHANCED_OK.get(hook, "2.0.0")
    return None if kind == 3 else f"{kind}.0.0"


class HookFlow(Protocol):
    """
    What a L{HookRunner} tells its connection about pending hooks.
    """

    def hookPending(self) -> None:
        """
        A hook (or other awaited work) is pending: stop reading input.
        """

    def hooksDone(self) -> None:
        """
        The queue has run dry after L{hookPending}: input may resume.
        """


class HookRunner:
    """
    Calls the hooks of one handler, one at a time, in order.

    @ivar handler: the handler whose hooks are called.
    @ivar pending: the Deferred of the hook in flight, or L{None}.
    @ivar steps: the steps waiting to run, in order (read it, never change
        it: L{now}, L{later} and L{run} do).
    @ivar holding: whether input is held because of a pending hook (until
        the queue next runs dry). L{drive} has nothing to do unless
        C{steps} or C{holding}: a caller on a hot path may test them first.
    """

    __slots__ = (
        "handler",
        "pending",
        "_conversation",
        "_flow",
        "steps",
        "_driving",
        "holding",
        "_final",
    )

    def __init__(
        self, handler: Any, conversation: Conversation, flow: HookFlow
    ) -> None:
        """
        @param conversation: the conversation the hooks belong to: its
            session, settings (the hook timeout), clock and events.
        @param flow: told when a hook becomes pending and when the queue has
            run dry after that (an object rather than two callbacks: there
            is a runner per connection, and bound methods cost memory).
        """
        self.handler = handler
        self.pending: Deferred[Any] | None = None
        self._conversation = conversation
        self._flow = flow
        # A tuple, rebuilt as steps come and go: steps are few, and an idle
        # connection's empty queue is the shared empty tuple.
        self.steps: tuple[Step, ...] = ()
        self._driving = False
        self.holding = False
        self._final: tuple[Step, ...] | None = None

    @property
    def idle(self) -> bool:
        """
        Whether no step is running or queued and no hook is pending.
        """
        return not (self._driving or self.steps or self.pending is not None)

    def now(self, *steps: Step) -> None:
        """
        Run C{steps} next, before anything already queued.
        """
        self.steps = steps + self.steps

    def later(self, *steps: Step) -> None:
        """
        Run C{steps} after everything already queued.
        """
        self.steps += steps

    def close(self, *final: Step) -> None:
        """
        The connection is gone: let the hook in flight finish, drop every
        queued step, then run C{final}. Only the first call counts.
        """
        if self._final is not None:
            return
        self._final = final
        if self.pending is None:
            self._runFinal()

    def cancel(self) -> None:
        """
        Drop the queued steps and cancel the hook in flight (its Deferred;
        a coroutine at its C{await}) -- unless the final steps of L{close}
        (ABORT, DISCONNECT) have started: they clean up, and are let finish.
        """
        if self._final is not None and not self._final:
            return
        self.steps = ()
        if self.pending is not None:
            self.pending.cancel()

    def _runFinal(self) -> None:
        final, self._final = self._final, ()
        self.steps = ()
        if final:
            self.now(*final)
        self.drive()

    def drive(self) -> None:
        """
        Run queued steps until the queue is empty or a hook is pending; then
        resume input if a pending hook had paused it.
        """
        if self._driving or not (self.steps or self.holding):
            return
        self._runSteps(None, ())

    def run(self, step: Callable[..., None], *args: Any) -> None:
        """
        Run C{step(*args)} now, then whatever it queued; when other steps
        are queued or a hook is pending, queue it first in line instead.
        """
        if self._driving or self.steps or self.pending is not None:
            self.steps = (lambda: step(*args), *self.steps)
            self.drive()
            return
        self._runSteps(step, args)

    def _runSteps(
        self, first: Callable[..., None] | None, args: tuple[Any, ...]
    ) -> None:
        self._driving = True
        try:
            if first is not None:
                first(*args)
            while self.steps and self.pending is None:
                steps = self.steps
                self.steps = steps[1:]
                steps[0]()
        finally:
            self._driving = False
        if self.pending is None and self.holding:
            self.holding = False
            self._flow.hooksDone()

    def invoke(self, name: str, args: tuple[Any, ...], done: Done) -> None:
        """
        Call hook C{name} and pass its result (a value, or a L{Failure}) to
        C{done}: at once if the hook answered synchronously, else when its
        Deferred fires. C{done} must not call hooks itself; it queues steps
        with L{now}.
        """
        conversation = self._conversation
        if conversation.events.hookFinished:
            done = conversation.timed(name, done)
        try:
            result = getattr(self.handler, name)(*args)
        except Exception:
            done(Failure())
            return
        self._settle(result, done)

    def _settle(self, result: Any, done: Done) -> None:
        if (
            result is None
            or type(result) in _PLAIN_RESULTS
            or not (isinstance(result, Deferred) or inspect.iscoroutine(result))
        ):
            done(result)
            return
        deferred: Deferred[Any] = ensureDeferred(result)
        timeout = self._conversation.settings.hookTimeout
        if not deferred.called and timeout:
            deferred.addTimeout(timeout, self._conversation.clock)
        self._await(deferred, done)

    def wait(self, deferred: Deferred[Any], done: Done) -> None:
        """
        Treat C{deferred} (work esmtpkit does for the handler, such as
        checking credentials) like a pending hook: hold the queue and input
        until it fires, then pass its result to C{done}.
        """
        self._await(deferred, done)

    def sleep(self, seconds: float) -> None:
        """
        Hold the queue, and input, for C{seconds} (to slow a client down).
        """
        self._await(deferLater(self._conversation.clock, seconds), lambda value: None)

    def _await(self, deferred: Deferred[Any], done: Done) -> None:
        settled: list[Any] = []

        def fired(value: Any) -> None:
            if self.pending is deferred:
                self._fired(value, done)
            else:
                settled.append(value)

        deferred.addBoth(fired)
        if settled:
            done(settled[0])
            return
        self.pending = deferred
        if not self.holding:
            self.holding = True
            self._flow.hookPending()

    def _fired(self, value: Any, done: Done) -> None:
        self.pending = None
        done(value)
        if self._final:
            self._runFinal()
        else:
            self.drive()

    def failureReply(self, name: str, failure: Failure) -> Reply:
        """
        The reply for hook C{name} that raised or whose Deferred failed; the
        failure is logged unless it is a L{ReplyError}.
        """
        if isinstance(failure.value, ReplyError):
            return failure.value.reply
        conversation = self._conversation
        if conversation.interrupted and failure.check(CancelledError):
            return SHUTTING_DOWN  # cancelled by the shutdown, not a timeout
        if failure.check(DeferredTimeout, CancelledError):
            for notify in conversation.events.limitReached:
                notify(conversation.session, "hook-timeout", f"hook {name} timed out")
            return HOOK_TIMEOUT
        for notify in conversation.events.hookFailed:
            notify(conversation.session, name, failure)
        return HOOK_FAILED

    def callReply(
        self, name: str, args: tuple[Any, ...], then: Callable[[Reply], None]
    ) -> None:
        """
        Call reply hook C{name} and pass the L{Reply} it gives to C{then}:
        L{None} means the default reply, a failure means 451 4.3.0 (or the
        reply of a L{ReplyError}), and a reply without an enhanced status
        code gets one that fits the command.
        """
        conversation = self._conversation
        if conversation.events.hookFinished:
            then = conversation.timed(name, then)
        try:
            result = getattr(self.handler, name)(*args)
        except Exception:
            result = Failure()
        if type(result) is Reply and (
            result.enhanced is not None or 300 <= result.code < 400
        ):
            then(result)  # the common case: nothing to wait for or add
            return
        self._settle(result, lambda value: then(self.toReply(name, args, value)))

    def toReply(self, name: str, args: tuple[Any, ...], value: Any) -> Reply:
        """
        The reply that the result C{value} of reply hook C{name} stands for
        (a L{PerRecipient} result of EOM is passed on as it is).
        """
        if type(value) is PerRecipient and name == "EOM":
            return value  # type: ignore[return-value]
        if isinstance(value, Failure):
            reply = self.failureReply(name, value)
        elif value is None or value is NO_OPINION:
            reply = defaultReply(name, self.handler, args)
        else:
            try:
                reply = toReply(value)
            except (TypeError, ValueError):
                reply = self.failureReply(name, Failure())
        if reply.enhanced is None:
            enhanced = defaultEnhanced(name, reply.code)
            if enhanced is not None:
                reply = reply.withEnhanced(enhanced)
        return reply

    def notify(self, name: str, then: Callable[[], None] | None = None) -> Done:
        """
        A C{done} for hooks whose result is ignored (ABORT, DISCONNECT): a
        failure is logged, then C{then} runs.
        """

        def done(value: Any) -> None:
            if isinstance(value, Failure):
                self.failureReply(name, value)
            if then is not None:
                then()

        return done
