"""
L{ESMTPHandler}: every hook of L{IESMTPHandler} with its default reply.
Subclass it and override only the hooks you need.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

from zope.interface import implementer
from zope.interface.interface import Method

from .interfaces import IESMTPHandler
from .reply import HookResult, Reply
from .session import Params, Session

__all__ = ["ESMTPHandler", "VERSION_TEXT", "NO_OPINION", "skippableFor"]

VERSION_TEXT = "esmtpkit"


class _NoOpinion:
    """
    The type of L{NO_OPINION}.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_OPINION"

    def __reduce__(self) -> str:
        return "NO_OPINION"


NO_OPINION = _NoOpinion()
"""
What a hook returns to say it has no opinion: in a L{Chain
<esmtpkit.handlers.Chain>}, the next handler is asked; alone, it means the
default reply, as L{None} does.
"""


# Replies that never change are made once (Reply caches its wire form).
_OK = Reply(250, "OK", enhanced="2.0.0")
_GO_AHEAD = Reply(354, 'Enter mail, end with "." on a line by itself')
_CANNOT_VRFY = Reply(
    252, "Cannot VRFY user; try RCPT to attempt delivery", enhanced="2.5.0"
)
_NO_EXPN = Reply(502, "Sorry we don't allow this operation", enhanced="5.5.1")
_HELP = Reply(
    214,
    f"This is {VERSION_TEXT}",
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN "
    "STARTTLS AUTH",
    enhanced="2.0.0",
)
_LMTP_HELP = Reply(
    214,
    f"This is {VERSION_TEXT}",
    "Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN STARTTLS AUTH",
    enhanced="2.0.0",
)
_BYE = Reply(221, "Closing connection", enhanced="2.0.0")
_START_TLS = Reply(220, "Ready to start TLS", enhanced="2.0.0")
_AUTHENTICATED = Reply(235, "Authentication successful", enhanced="2.7.0")


def _withHookDocs(cls: type, append: bool = True) -> type:
    """
    Give each hook method of C{cls} the docstring of its L{IESMTPHandler}
    method (what the hook receives and what its reply means), so that
    C{pydoc} and the API reference show it on the class too.

    @param append: also add it after a docstring of the method's own
        (otherwise only methods without one get it).
    """
    for name in IESMTPHandler.names():
        spec = IESMTPHandler[name]
        method = cls.__dict__.get(name)
        if not isinstance(spec, Method) or not inspect.isfunction(method):
            continue
        hook = inspect.cleandoc(spec.getDoc() or "")
        own = inspect.cleandoc(method.__doc__ or "")
        if not own:
            method.__doc__ = hook
        elif append and hook not in own:
            method.__doc__ = f"{own}\n\n{hook}"
    return cls


@_withHookDocs
@implementer(IESMTPHandler)
class ESMTPHandler:
    """
    A handler that carries on a correct SMTP conversation and does nothing
    with the mail: every hook gives the default reply of
    Apache2::Protocol::ESMTP (with enhanced status codes).

    @ivar session: the connection's L{Session}, set by esmtpkit.
    @ivar disconnect: set to C{True} to close after the current reply.
    """

    # Slots, so that a handler that keeps nothing of its own (Sink) costs an
    # idle connection no dict; subclasses may add attributes as usual.
    __slots__ = ("session", "disconnect")

    session: Session
    disconnect: bool

    Options: ClassVar[type | None] = None
    """
    The handler's own options for C{twistd esmtpkit --handler-option}: a
    L{esmtpkit.handlers.HandlerOptions} subclass, or L{None} for none (see
    docs/handlers.md, "Handler options").
    """

    def __init__(self) -> None:
        self.disconnect = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass's hooks without a docstring show the interface's.
        super().__init_subclass__(**kwargs)
        _withHookDocs(cls, append=False)

    def CONNECT(self) -> HookResult:
        return _greeting(self.session.hostname, self.session.lmtp)

    def HELO(self, domain: str) -> HookResult:
        return Reply(250, _hello(self.session, domain))

    def EHLO(self, domain: str) -> HookResult:
        return Reply(250, _hello(self.session, domain))

    def MAIL(self, sender: str, params: Params) -> HookResult:
        """
        Accept the sender; refuse parameters esmtpkit does not know (a
        handler that understands more overrides this).
        """
        refusal = _unknownParameter(params) if params else None
        return refusal or _senderOk(sender)

    def RCPT(self, recipient: str, params: Params) -> HookResult:
        """
        Accept the recipient; refuse parameters esmtpkit does not know.
        """
        refusal = _unknownParameter(params) if params else None
        return refusal or _recipientOk(recipient)

    def DATA(self) -> HookResult:
        return _GO_AHEAD

    def HEADER(self, name: str, value: str) -> HookResult:
        return None

    def EOH(self) -> HookResult:
        return None

    def BODY(self, chunk: bytes) -> HookResult:
        return None

    def EOM(self) -> HookResult:
        transaction = self.session.transaction
        queued = f" as {transaction.id}" if transaction is not None else ""
        return Reply._checked(250, f"Message accepted for delivery{queued}", "2.0.0")

    def ABORT(self) -> HookResult:
        return None

    def RSET(self) -> HookResult:
        return _OK

    def NOOP(self) -> HookResult:
        return _OK

    def VRFY(self, address: str) -> HookResult:
        return _CANNOT_VRFY

    def EXPN(self, address: str) -> HookResult:
        return _NO_EXPN

    def HELP(self, topic: str | None) -> HookResult:
        return _LMTP_HELP if self.session.lmtp else _HELP

    def QUIT(self) -> HookResult:
        return _BYE

    def UNKNOWN(self, line: str) -> HookResult:
        shown = "".join(c if c.isprintable() else "?" for c in line[:64])
        return Reply(500, f"Command unrecognized: {shown}", enhanced="5.5.2")

    def STARTTLS(self) -> HookResult:
        return _START_TLS

    def AUTH(self, identity: str) -> HookResult:
        return _AUTHENTICATED

    def DISCONNECT(self) -> HookResult:
        return None


@functools.lru_cache(maxsize=64)
def _greeting(hostname: str, lmtp: bool = False) -> Reply:
    return Reply(220, f"{hostname} {'LMTP' if lmtp else 'ESMTP'} Mail Server")


# Replies naming an address (validated, so printable: no need to check the
# text), kept for the addresses seen most recently: many messages share a
# sender or recipient, and a kept reply has its wire bytes.
@functools.lru_cache(maxsize=512)
def _senderOk(sender: str) -> Reply:
    return Reply._checked(250, f"<{sender}>, sender ok", "2.1.0")


@functools.lru_cache(maxsize=512)
def _recipientOk(recipient: str) -> Reply:
    return Reply._checked(250, f"<{recipient}>, recipient ok", "2.1.5")


def _unknownParameter(params: Params) -> Reply | None:
    unknown: frozenset[str] = getattr(params, "unknown", frozenset())
    for keyword in params:
        if keyword in unknown:
            return Reply(555, f"Unsupported parameter {keyword}", enhanced="5.5.4")
    return None


def _hello(session: Session, domain: str) -> str:
    peer = session.peerHost
    where = f" [{peer}]" if peer else ""
    return f"{session.hostname} Hello {domain}{where}, pleased to meet you"


_skipped: dict[type, frozenset[str]] = {}
_CONTENT_HOOKS = ("HEADER", "EOH", "BODY")

# What skippableHooks keeps for a class that answers for each instance.
_ASK_INSTANCE: frozenset[str] = frozenset(("ask the instance",))


def skippableHooks(cls: type) -> frozenset[str]:
    """
    The content hooks (HEADER, EOH, BODY) that handler class C{cls} takes
    unchanged from L{ESMTPHandler}, which do nothing: esmtpkit need not call
    them. (For a handler with a C{skippableHooks()} method, such as a
    L{Chain <esmtpkit.handlers.Chain>}, ask L{skippableFor} instead.)
    """
    names = _skipped.get(cls)
    if names is None:
        names = _classSkippable(cls)
    return frozenset() if names is _ASK_INSTANCE else names


def _classSkippable(cls: type) -> frozenset[str]:
    if callable(getattr(cls, "skippableHooks", None)):
        names = _ASK_INSTANCE
    else:
        names = frozenset(
            name
            for name in _CONTENT_HOOKS
            if getattr(cls, name, None) is getattr(ESMTPHandler, name)
        )
    if len(_skipped) < 1000:
        _skipped[cls] = names
    return names


def skippableFor(handler: object) -> frozenset[str]:
    """
    The content hooks esmtpkit need not call on C{handler}: those its class
    leaves to L{ESMTPHandler}, or, when the handler has a
    C{skippableHooks()} method, what that returns (checked once, when the
    conversation starts: a chain's answer depends on its members).
    """
    cls = type(handler)
    names = _skipped.get(cls)
    if names is None:
        names = _classSkippable(cls)
    if names is _ASK_INSTANCE:
        asked = handler.skippableHooks()  # type: ignore[attr-defined]
        return frozenset(name for name in asked if name in _CONTENT_HOOKS)
    return names


def defaultReply(hook: str, handler: object, args: tuple[object, ...]) -> Reply:
    """
    The reply L{ESMTPHandler} would give for C{hook}, for a handler whose
    hook returned L{None}.
    """
    method = getattr(ESMTPHandler, hook)
    reply = method(handler, *args)
    assert isinstance(reply, Reply)
    return reply
