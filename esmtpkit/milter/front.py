"""
L{MilterFront}: milters (L{MilterFilter}s) in front of the handler that
takes the mail, as Postfix's C{smtpd_milters} stand in front of its queue.

B{To be replaced by C{esmtpkit.handlers.Chain}} once that is on main: this
is the smallest composition C{--milter} needs, and keeps Chain's rule --
the handlers are asked in order and the first that gives a reply (not
L{None}, "no opinion") decides; the last one's answer stands.

For each reply hook the filters are asked in order, then the handler;
HEADER, EOH and BODY go to every filter and then to the handler (a refusal
stops them); ABORT and DISCONNECT go to all. When a filter decides EOM (a
refusal, or a milter's discard), the handler gets ABORT instead: it never
takes a message it was not asked to.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure
from zope.interface import implementer

from ..handler import skippableHooks
from ..interfaces import IESMTPHandler
from ..session import Session
from .connector import MilterConnector
from .filter import MilterFilter

__all__ = ["MilterFront", "withMilters"]

_REPLY_HOOKS = (
    "CONNECT",
    "HELO",
    "EHLO",
    "MAIL",
    "RCPT",
    "DATA",
    "RSET",
    "NOOP",
    "VRFY",
    "EXPN",
    "HELP",
    "QUIT",
    "UNKNOWN",
    "STARTTLS",
    "AUTH",
)


def _pending(result: Any) -> bool:
    return isinstance(result, Deferred) or inspect.iscoroutine(result)


@implementer(IESMTPHandler)
class MilterFront:
    """
    Filters, then a handler, acting as one handler.

    @ivar filters: the handlers asked first, in order.
    @ivar handler: the handler asked last, which takes the mail.
    """

    def __init__(self, filters: Sequence[Any], handler: Any) -> None:
        self.filters = list(filters)
        self.handler = handler
        self._all = [*self.filters, handler]
        self._disconnect = False
        self._content = {
            name: [h for h in self._all if name not in skippableHooks(type(h))]
            for name in ("HEADER", "EOH", "BODY")
        }

    @property
    def session(self) -> Session:
        return self.handler.session  # type: ignore[no-any-return]

    @session.setter
    def session(self, session: Session) -> None:
        for each in self._all:
            each.session = session

    @property
    def disconnect(self) -> bool:
        return self._disconnect or any(each.disconnect for each in self._all)

    @disconnect.setter
    def disconnect(self, value: bool) -> None:
        self._disconnect = value
        if not value:
            for each in self._all:
                each.disconnect = False

    def _first(self, name: str, args: tuple[Any, ...], start: int = 0) -> Any:
        handlers = self._all
        last = len(handlers) - 1
        for index in range(start, last + 1):
            result = getattr(handlers[index], name)(*args)
            if index == last:
                return result
            if _pending(result):
                return ensureDeferred(result).addCallback(
                    lambda value, i=index: (
                        value if value is not None else self._first(name, args, i + 1)
                    )
                )
            if result is not None:
                return result
        return None

    def _each(self, handlers: Sequence[Any], name: str, args: tuple[Any, ...]) -> Any:
        for index, each in enumerate(handlers):
            result = getattr(each, name)(*args)
            if _pending(result):
                rest = handlers[index + 1 :]
                return ensureDeferred(result).addCallback(
                    lambda _, rest=rest: self._each(rest, name, args)
                )
        return None

    def _everyone(self, name: str) -> Any:
        # ABORT and DISCONNECT reach every handler, whatever one of them does.
        failures: list[Failure] = []

        def step(index: int) -> Any:
            for i in range(index, len(self._all)):
                try:
                    result = getattr(self._all[i], name)()
                except Exception:
                    failures.append(Failure())
                    continue
                if _pending(result):
                    d = ensureDeferred(result)
                    d.addErrback(failures.append)
                    return d.addCallback(lambda _, i=i: step(i + 1))
            if failures:
                failures[0].raiseException()
            return None

        return step(0)

    def HEADER(self, name: str, value: str) -> Any:
        return self._each(self._content["HEADER"], "HEADER", (name, value))

    def EOH(self) -> Any:
        return self._each(self._content["EOH"], "EOH", ())

    def BODY(self, chunk: bytes) -> Any:
        return self._each(self._content["BODY"], "BODY", (chunk,))

    def EOM(self) -> Any:
        return self._eomFrom(0)

    def _eomFrom(self, start: int) -> Any:
        filters = self.filters
        for index in range(start, len(filters)):
            result = filters[index].EOM()
            if _pending(result):
                return ensureDeferred(result).addCallback(self._decidedEOM, index)
            if result is not None:
                return self._decidedEOM(result, index)
        return self.handler.EOM()

    def _decidedEOM(self, value: Any, index: int) -> Any:
        if value is None:
            return self._eomFrom(index + 1)
        aborted = self.handler.ABORT()
        if _pending(aborted):
            return ensureDeferred(aborted).addBoth(lambda _: value)
        return value

    def ABORT(self) -> Any:
        return self._everyone("ABORT")

    def DISCONNECT(self) -> Any:
        return self._everyone("DISCONNECT")


def _replyHook(name: str) -> Callable[..., Any]:
    def hook(self: MilterFront, *args: Any) -> Any:
        return self._first(name, args)

    hook.__name__ = name
    hook.__doc__ = f"Ask the filters, then the handler, for the reply to {name}."
    return hook


for _name in _REPLY_HOOKS:
    setattr(MilterFront, _name, _replyHook(_name))


def withMilters(
    connectors: Sequence[MilterConnector], handlerFactory: Callable[[], Any]
) -> Callable[[], MilterFront]:
    """
    A handler factory putting a L{MilterFilter} for each of C{connectors},
    in order, in front of the handler C{handlerFactory} makes.
    """

    def build() -> MilterFront:
        filters = [MilterFilter(connector) for connector in connectors]
        return MilterFront(filters, handlerFactory())

    return build
