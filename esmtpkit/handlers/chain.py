"""
L{Chain}: several handlers, asked in order for each hook, like the plugin
chains of Haraka and qpsmtpd.

The rules (docs/handlers.md, "Chain"):

  - A handler whose class leaves a hook to L{ESMTPHandler} is not asked
    (it has no opinion); nor is one after the hook was decided.
  - L{None} and L{NO_OPINION} are no opinion: the next handler is asked.
  - Hooks that let the client go on (CONNECT, HELO, EHLO, STARTTLS, AUTH,
    MAIL, RCPT, DATA, EOM): a refusal (4xx, 5xx, or a raised
    L{ReplyError}) decides at once; an acceptance does not -- the next
    handler is asked too, and the last acceptance given is the reply. So a
    message is acknowledged only once every handler took it or had no
    opinion: a filter's explicit 250 at EOM never skips the delivering
    handler after it.
  - Hooks that answer a question (RSET, NOOP, VRFY, EXPN, HELP, QUIT,
    UNKNOWN): the first opinion decides.
  - HEADER, EOH and BODY go to every handler that has them, in order; a
    failure or L{ReplyError} there refuses the message (the rest are not
    called for it). ABORT and DISCONNECT go to every handler, whatever one
    of them raises.
  - No opinion at all gives the default reply.
  - A transaction that does not come about is ended for the members that
    took part: when MAIL is refused, the members asked before the refusal
    get ABORT; when EOM is refused (or fails), the members after the one
    that refused, which got no EOM, get ABORT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from ..core.modifications import declaresModifications, modifiedBefore
from ..core.results import PerRecipient
from ..handler import NO_OPINION, ESMTPHandler, skippableFor
from ..interfaces import IESMTPHandler
from ..reply import HookResult, toReply
from ..session import Params, Session
from .options import HandlerOptions
from .sequence import isAsync as _isAsync
from .sequence import run as _run
from .views import MemberSession

__all__ = ["Chain", "ChainOptions", "CONSENT_HOOKS", "ANSWER_HOOKS"]

CONSENT_HOOKS = frozenset(
    ("CONNECT", "HELO", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "EOM")
)
ANSWER_HOOKS = frozenset(("RSET", "NOOP", "VRFY", "EXPN", "HELP", "QUIT", "UNKNOWN"))
CONTENT_HOOKS = ("HEADER", "EOH", "BODY")
NOTIFY_HOOKS = ("ABORT", "DISCONNECT")
_REPLY_HOOKS = tuple(sorted(CONSENT_HOOKS | ANSWER_HOOKS))

# For each tuple of member classes: the positions of the members each reply
# hook asks (those whose class overrides it).
_plans: dict[tuple[type, ...], dict[str, tuple[int, ...]]] = {}


def _plan(classes: tuple[type, ...]) -> dict[str, tuple[int, ...]]:
    plan = _plans.get(classes)
    if plan is None:
        plan = {
            hook: tuple(
                index
                for index, cls in enumerate(classes)
                if getattr(cls, hook, None) is not getattr(ESMTPHandler, hook)
            )
            for hook in _REPLY_HOOKS
        }
        if len(_plans) < 256:
            _plans[classes] = plan
    return plan


class _Verdict:
    """
    What the members of a chain said so far about one reply hook.

    @ivar value: the reply to give (as a member returned it), or L{None}
        for the default.
    """

    __slots__ = ("hook", "value", "consent", "recipients", "perRecipient", "decided")

    def __init__(self, hook: str, recipients: Sequence[Any] = ()) -> None:
        self.hook = hook
        self.value: Any = None
        self.consent = hook in CONSENT_HOOKS
        self.recipients = recipients
        self.perRecipient: list[Any] | None = None
        self.decided = False

    def take(self, value: Any) -> bool:
        """
        Count a member's answer; return whether the hook is decided.
        """
        self.decided = self._take(value)
        return self.decided

    def _take(self, value: Any) -> bool:
        if value is None or value is NO_OPINION:
            return False
        if type(value) is PerRecipient and self.hook == "EOM":
            return self._takePerRecipient(value)
        reply = toReply(value)  # a bad value is the member's bug: 451
        if not self.consent:
            self.value = value
            return True
        if reply.code >= 400:
            self.value = value
            self.perRecipient = None
            return True
        self.value = value
        if self.perRecipient is not None:
            self.perRecipient = [
                old if old is not None and toReply(old).code >= 400 else value
                for old in self.perRecipient
            ]
        return False

    def _takePerRecipient(self, value: PerRecipient) -> bool:
        given = value.forRecipients(self.recipients)
        before = self.perRecipient or [self.value] * len(given)
        merged = []
        for old, new in zip(before, given, strict=True):
            if old is not None and toReply(old).code >= 400:
                merged.append(old)
            else:
                merged.append(old if new is None or new is NO_OPINION else new)
        self.perRecipient = merged
        return all(v is not None and toReply(v).code >= 400 for v in merged)

    def result(self) -> Any:
        if self.perRecipient is not None:
            return PerRecipient(self.perRecipient)
        return self.value


class ChainOptions(HandlerOptions):
    optParameters = [
        [
            "handlers",
            None,
            None,
            "Comma-separated dotted names of the members, in order (the same "
            "as --handler a.X,b.Y, which also takes their options).",
        ]
    ]

    def postOptions(self) -> None:
        if not self["handlers"]:
            raise UsageError("handlers=a.X,b.Y is required (or --handler a.X,b.Y)")


class Chain(ESMTPHandler):
    """
    Runs several handlers in order for each hook (see the module's
    docstring for the rules).

        Chain([SpamFilter(), Maildir("/srv/mail")])

    Put filters first and the handler that delivers last: a refusal by a
    later handler at RCPT or EOM cannot take back what an earlier one did.

    Each member gets its own C{session} (a L{MemberSession}: the
    connection's session, but C{data} and C{transaction.data} its own) and
    its own C{disconnect}; the chain disconnects after a reply when any
    member asked to. C{transaction.modifications} is shared: what one member
    records, later ones see. The whole chain's answer to a hook counts as
    one hook against C{Settings.hookTimeout}. A member's
    C{session.modifiedBefore} says whether a member before it declares
    C{mayModify} (so a relay last in the chain spools the message).

    @ivar handlers: the members, in order.
    """

    Options = ChainOptions

    def __init__(self, handlers: Sequence[Any]) -> None:
        """
        @param handlers: the members, each providing L{IESMTPHandler} (a new
            set for each connection: build a chain per connection, e.g. with
            L{Chain.factory}).
        """
        self._disconnect = False
        self._session: Session | None = None
        self.handlers = tuple(handlers)
        if not self.handlers:
            raise ValueError("a Chain needs at least one handler")
        for handler in self.handlers:
            if not IESMTPHandler.providedBy(handler):
                raise TypeError(f"{handler!r} does not provide IESMTPHandler")
        self._plan = _plan(tuple(type(h) for h in self.handlers))
        skipped = [skippableFor(h) for h in self.handlers]
        self._content = {
            hook: tuple(
                h
                for h, skip in zip(self.handlers, skipped, strict=True)
                if hook not in skip
            )
            for hook in CONTENT_HOOKS
        }

    @staticmethod
    def factory(factories: Sequence[Callable[[], Any]]) -> Callable[[], Chain]:
        """
        A handler factory making a L{Chain} of a new handler from each of
        C{factories}, for each connection.
        """
        factories = tuple(factories)
        return lambda: Chain([make() for make in factories])

    @classmethod
    def fromHandlerOptions(cls, options: ChainOptions) -> Callable[[], Any]:
        """
        C{--handler esmtpkit.handlers.Chain --handler-option handlers=...}.
        """
        from .options import handlerFactory, splitHandlerNames

        names = options["handlers"]
        factory = handlerFactory(names, (), options.serverOptions)
        if len(splitHandlerNames(names)) == 1:
            return cls.factory([factory])
        return factory

    def skippableHooks(self) -> frozenset[str]:
        """
        The content hooks no member has (esmtpkit need not call them).
        """
        return frozenset(hook for hook in CONTENT_HOOKS if not self._content[hook])

    # -- per-member state ---------------------------------------------------

    @property  # type: ignore[override]
    def session(self) -> Session:
        if self._session is None:
            raise AttributeError("session")  # not set yet, as for any handler
        return self._session

    @session.setter
    def session(self, session: Session) -> None:
        self._session = session
        before = modifiedBefore(session)
        for handler in self.handlers:
            handler.session = MemberSession(session, before)
            handler.disconnect = False
            before = before or declaresModifications(handler)

    @property
    def mayModify(self) -> bool:
        """
        Whether a member declares modifications (C{mayModify}).
        """
        return any(declaresModifications(h) for h in self.handlers)

    @property  # type: ignore[override]
    def disconnect(self) -> bool:
        return self._disconnect or any(h.disconnect for h in self.handlers)

    @disconnect.setter
    def disconnect(self, value: bool) -> None:
        self._disconnect = value

    # -- running the members -----------------------------------------------

    def _reply(self, hook: str, args: tuple[Any, ...]) -> HookResult:
        positions = self._plan[hook]
        if not positions:
            return None
        handlers = self.handlers
        if hook != "EOM" and hook != "MAIL":
            verdict = _Verdict(hook)
            calls = (getattr(handlers[i], hook) for i in positions)
            return _run(calls, args, verdict.take, verdict.result)
        recipients: Sequence[Any] = ()
        if hook == "EOM" and self._session is not None:
            transaction = self._session.transaction
            recipients = transaction.recipients if transaction is not None else ()
        verdict = _Verdict(hook, recipients)
        asked = [0]

        def calls() -> Iterator[Callable[..., Any]]:
            for index in positions:
                asked[0] = index
                yield getattr(handlers[index], hook)

        try:
            outcome = _run(calls(), args, verdict.take, verdict.result)
        except Exception:
            outcome = Failure()
        if isinstance(outcome, Deferred):
            return outcome.addBoth(self._settled, hook, verdict, asked)
        return self._settled(outcome, hook, verdict, asked)

    def _settled(
        self, outcome: Any, hook: str, verdict: _Verdict, asked: list[int]
    ) -> Any:
        """
        After MAIL or EOM: the members that took part in a transaction that
        did not come about get ABORT -- at MAIL, those that accepted before
        a later one refused; at EOM, those after the one that refused (or
        failed), which never got their EOM. Then C{outcome} is passed on.
        """
        failed = isinstance(outcome, Failure)
        if failed and outcome.check(CancelledError):
            return outcome  # the conversation ends the transaction with ABORT
        if not (failed or verdict.decided):
            return outcome
        if hook == "MAIL":
            others = self.handlers[: asked[0]]
        else:
            others = self.handlers[asked[0] + 1 :]
        if not others:
            return outcome
        aborted = self._notify("ABORT", others)
        if isinstance(aborted, Deferred):
            return aborted.addBoth(lambda _: outcome)
        return outcome

    def _all(self, handlers: Sequence[Any], hook: str, args: tuple[Any, ...]) -> Any:
        if not handlers:
            return None
        calls = (getattr(h, hook) for h in handlers)
        return _run(calls, args, _never, _nothing)

    def _notify(self, hook: str, handlers: Sequence[Any] | None = None) -> Any:
        # Every member, whatever one of them raises; the first failure is
        # passed on (logged) once all have run.
        failures: list[Failure] = []

        def call(method: Callable[[], Any]) -> Callable[[], Any]:
            def guarded() -> Any:
                try:
                    value = method()
                except Exception:
                    failures.append(Failure())
                    return None
                if _isAsync(value):
                    deferred = ensureDeferred(value)
                    deferred.addErrback(failures.append)
                    return deferred
                return value

            return guarded

        def finish() -> None:
            if failures:
                failures[0].raiseException()

        members = self.handlers if handlers is None else handlers
        calls = (call(getattr(h, hook)) for h in members)
        return _run(calls, (), _never, finish)

    # -- the hooks ------------------------------------------------------------

    def CONNECT(self) -> HookResult:
        return self._reply("CONNECT", ())

    def HELO(self, domain: str) -> HookResult:
        return self._reply("HELO", (domain,))

    def EHLO(self, domain: str) -> HookResult:
        return self._reply("EHLO", (domain,))

    def MAIL(self, sender: str, params: Params) -> HookResult:
        return self._reply("MAIL", (sender, params))

    def RCPT(self, recipient: str, params: Params) -> HookResult:
        return self._reply("RCPT", (recipient, params))

    def DATA(self) -> HookResult:
        return self._reply("DATA", ())

    def HEADER(self, name: str, value: str) -> HookResult:
        return self._all(self._content["HEADER"], "HEADER", (name, value))

    def EOH(self) -> HookResult:
        return self._all(self._content["EOH"], "EOH", ())

    def BODY(self, chunk: bytes) -> HookResult:
        return self._all(self._content["BODY"], "BODY", (chunk,))

    def EOM(self) -> HookResult:
        return self._reply("EOM", ())

    def ABORT(self) -> HookResult:
        return self._notify("ABORT")

    def RSET(self) -> HookResult:
        return self._reply("RSET", ())

    def NOOP(self) -> HookResult:
        return self._reply("NOOP", ())

    def VRFY(self, address: str) -> HookResult:
        return self._reply("VRFY", (address,))

    def EXPN(self, address: str) -> HookResult:
        return self._reply("EXPN", (address,))

    def HELP(self, topic: str | None) -> HookResult:
        return self._reply("HELP", (topic,))

    def QUIT(self) -> HookResult:
        return self._reply("QUIT", ())

    def UNKNOWN(self, line: str) -> HookResult:
        return self._reply("UNKNOWN", (line,))

    def STARTTLS(self) -> HookResult:
        return self._reply("STARTTLS", ())

    def AUTH(self, identity: str) -> HookResult:
        return self._reply("AUTH", (identity,))

    def DISCONNECT(self) -> HookResult:
        return self._notify("DISCONNECT")

    def __repr__(self) -> str:
        return f"Chain({list(self.handlers)!r})"


def _never(value: Any) -> bool:
    return False


def _nothing() -> None:
    return None
