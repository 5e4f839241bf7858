"""
L{Conversation}: the rules of one conversation between a client and a
handler, whatever wire carries it (SMTP, LMTP, and a milter to come).

A face parses its wire and asks the conversation to do what a command
means: greet, start a session (HELO, EHLO, LHLO), start a transaction
(MAIL), add recipients (RCPT), take the message (DATA and the content
pipeline, L{Content}), end the transaction (RSET, a new greeting, QUIT) and
the connection. The conversation builds the handler, calls its hooks
through the L{HookRunner} (in order, one at a time), keeps the session and
transaction state, and tells the server's observers. The face decides what
the replies look like on its wire and when they go out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from ..handler import skippableFor
from ..interfaces import IESMTPHandler
from ..reply import Reply
from ..session import Params, Recipient
from .content import Content
from .hooks import HookFlow, HookRunner
from .results import MessageResult, PerRecipient

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ..session import Session, Transaction
    from ..settings import Settings
    from .events import ServerEvents

__all__ = ["Conversation"]

Then = Callable[[Reply], None]


class Conversation:
    """
    One client's conversation with one handler.

    @ivar session: the L{Session}, which the handler sees too.
    @ivar handler: the handler, or L{None} until L{start} built one.
    @ivar hooks: the L{HookRunner} that calls the handler's hooks (made by
        L{start}).
    @ivar settings: the server's L{Settings}.
    @ivar clock: the time source of timeouts.
    @ivar events: the server's L{ServerEvents}.
    @ivar skippable: the content hooks the handler leaves to
        L{ESMTPHandler <esmtpkit.ESMTPHandler>} (they do nothing, so they are
        not called).
    @ivar perRecipient: whether the face answers the end of a message once
        per recipient (LMTP); if not (SMTP), a L{PerRecipient} result
        becomes one reply (L{MessageResult.single}) before anything counts
        it.
    @ivar interrupted: whether the server cut the conversation short
        (L{interrupt}): nothing a hook answers from then on reaches the
        client, and no message is accepted.
    """

    __slots__ = (
        "session",
        "handler",
        "hooks",
        "settings",
        "clock",
        "events",
        "skippable",
        "perRecipient",
        "interrupted",
    )

    def __init__(
        self,
        session: Session,
        settings: Settings,
        clock: IReactorTime,
        events: ServerEvents,
    ) -> None:
        self.session = session
        self.settings = settings
        self.clock = clock
        self.events = events
        self.handler: Any = None
        self.hooks: HookRunner = None  # type: ignore[assignment]
        self.skippable: frozenset[str] = frozenset()
        self.perRecipient = False
        self.interrupted = False

    # -- the handler ------------------------------------------------------

    def start(self, handlerFactory: Callable[[], Any], flow: HookFlow) -> bool:
        """
        Build the handler for this conversation and give it the session.

        @param flow: told when input must wait for a pending hook.
        @return: whether a handler could be built; if not, the failure was
            reported and the face must refuse service (421).
        """
        session = self.session
        try:
            handler = handlerFactory()
            if not IESMTPHandler.providedBy(handler):
                raise TypeError(f"{handler!r} does not provide IESMTPHandler")
            handler.session = session
            handler.disconnect = False
        except Exception:
            failure = Failure()
            for notify in self.events.handlerFailed:
                notify(session, failure)
            return False
        self.handler = handler
        self.skippable = skippableFor(handler)
        self.hooks = HookRunner(handler, self, flow)
        return True

    def timed(self, hook: str, done: Callable[[Any], None]) -> Callable[[Any], None]:
        """
        C{done}, reporting how long hook C{hook} took when it is called
        (used only while someone listens to C{hookFinished}).
        """
        started = self.clock.seconds()

        def finished(value: Any) -> None:
            seconds = self.clock.seconds() - started
            for notify in self.events.hookFinished:
                notify(self.session, hook, seconds)
            done(value)

        return finished

    # -- commands ---------------------------------------------------------

    def greet(self, then: Then) -> None:
        """
        Ask CONNECT for the greeting.
        """
        self.hooks.run(self.hooks.callReply, "CONNECT", (), then)

    def hello(self, hook: str, domain: str, extended: bool, then: Then) -> None:
        """
        A (new) greeting from the client: end any transaction, then ask
        C{hook} (HELO or EHLO; LMTP's LHLO asks EHLO); a 2xx reply starts a
        session named C{domain}, extended (ESMTP, LMTP) or not.
        """
        session = self.session

        def greeted(reply: Reply) -> None:
            if reply.code // 100 == 2:
                session.heloName = domain
                session.esmtp = extended
            then(reply)

        hooks = self.hooks
        hooks.now(self.abortStep, lambda: hooks.callReply(hook, (domain,), greeted))

    def mail(self, sender: str, params: Params, then: Then) -> None:
        """
        Start a transaction from C{sender} if MAIL agrees (2xx).
        """
        session = self.session
        transaction = session.transaction = session.newTransaction(sender, params)

        def answered(reply: Reply) -> None:
            if reply.code // 100 != 2:
                session.transaction = None
            elif self.events.transactionStarted:
                for notify in self.events.transactionStarted:
                    notify(session, transaction)
            then(reply)

        self.hooks.run(self.hooks.callReply, "MAIL", (sender, params), answered)

    def rcpt(self, recipient: str, params: Params, then: Then) -> None:
        """
        Add C{recipient} to the open transaction if RCPT agrees (2xx).
        """
        transaction = self.session.transaction
        assert transaction is not None

        def answered(reply: Reply) -> None:
            if reply.code // 100 == 2:
                transaction.recipients.append(Recipient(recipient, params))
            then(reply)

        self.hooks.run(self.hooks.callReply, "RCPT", (recipient, params), answered)

    def data(self, then: Then) -> None:
        """
        Ask DATA whether the message may come: 354 lets it in (the face
        then reads it into a L{Content} of this conversation).
        """
        self.hooks.run(self.hooks.callReply, "DATA", (), then)

    def command(self, hook: str, args: tuple[Any, ...], then: Then) -> None:
        """
        A command that changes no state (NOOP, VRFY, EXPN, HELP, an unknown
        command, STARTTLS, AUTH): ask C{hook}.
        """
        self.hooks.run(self.hooks.callReply, hook, args, then)

    def reset(self, hook: str, then: Then) -> None:
        """
        RSET or QUIT: end any transaction, then ask C{hook}.
        """
        hooks = self.hooks
        hooks.now(self.abortStep, lambda: hooks.callReply(hook, (), then))

    # -- the end of a transaction -------------------------------------------

    def abortStep(self) -> None:
        """
        End the open transaction, if any, with ABORT (a step of the hook
        queue).
        """
        session = self.session
        transaction = session.transaction
        if transaction is None:
            return

        def ended() -> None:
            session.transaction = None
            for notify in self.events.transactionEnded:
                notify(session, transaction, "aborted", ())

        self.hooks.invoke("ABORT", (), self.hooks.notify("ABORT", ended))

    def endMessage(
        self, content: Content, then: Callable[[MessageResult], None]
    ) -> None:
        """
        The whole message has been read into C{content} (a step of the hook
        queue): ask EOM, unless the message was refused already, and end the
        transaction. C{then} gets a reply per accepted recipient.
        """
        if self.interrupted:
            return  # no EOM: the transaction stays open for ABORT
        session = self.session
        transaction = content.transaction
        transaction.size = content.size
        if content.failure is not None:
            then(MessageResult.forAll(content.failure, content.recipients))
            return

        def answered(value: Reply | PerRecipient) -> None:
            if self.interrupted:
                # Too late: the client was told 421 and is gone. The message
                # is not accepted; the open transaction ends with ABORT.
                return
            if type(value) is PerRecipient:
                result = self._perRecipient(transaction, value)
                if not self.perRecipient:
                    # SMTP: the one reply it sends is what counts.
                    count = len(transaction.recipients)
                    result = MessageResult.forAll(result.single(), count)
                outcome = result.outcome
            else:
                count = len(transaction.recipients)
                result = MessageResult((value,) * (count or 1), value)
                outcome = "accepted" if value.code // 100 == 2 else "refused"
            if outcome != "refused":
                session.messages += 1
            session.transaction = None
            if self.events.transactionEnded:
                for notify in self.events.transactionEnded:
                    notify(session, transaction, outcome, result.replies)
            then(result)

        self.hooks.callReply("EOM", (), answered)  # type: ignore[arg-type]

    def _perRecipient(
        self, transaction: Transaction, value: PerRecipient
    ) -> MessageResult:
        recipients = transaction.recipients
        hooks = self.hooks
        try:
            values = value.forRecipients(recipients)
        except ValueError:
            reply = hooks.failureReply("EOM", Failure())
            return MessageResult.forAll(reply, len(recipients))
        return MessageResult([hooks.toReply("EOM", (), v) for v in values])

    # -- the end of the connection ------------------------------------------

    def interrupt(self) -> None:
        """
        The server ends the conversation now, whatever is in flight (the
        shutdown deadline): the hook in flight, if any, is cancelled (its
        Deferred, or the coroutine at its C{await}; not ABORT or DISCONNECT
        once L{close} has started them), and nothing it or any later hook
        answers counts. An EOM in flight does not accept the
        message: the transaction stays open, so L{close} ends it with
        ABORT. Call it once the face has stopped writing replies.
        """
        if self.interrupted:
            return
        self.interrupted = True
        if self.hooks is not None:
            self.hooks.cancel()

    def close(self, then: Callable[[], None] | None = None) -> None:
        """
        The connection is gone: the hook in flight finishes, then ABORT if a
        transaction is open, then DISCONNECT, then C{connectionClosed}, then
        C{then}.
        """
        if self.hooks is None:
            self._closed(then)
            return
        hooks = self.hooks
        hooks.close(
            self.abortStep,
            lambda: hooks.invoke(
                "DISCONNECT",
                (),
                hooks.notify("DISCONNECT", lambda: self._closed(then)),
            ),
        )

    def _closed(self, then: Callable[[], None] | None) -> None:
        for notify in self.events.connectionClosed:
            notify(self.session)
        if then is not None:
            then()
