"""
The contract between esmtpkit and the code that makes a server do something.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from .session import Params

__all__ = ["IESMTPHandler", "IServerObserver"]


class IESMTPHandler(Interface):
    """
    One object per SMTP connection that decides what the server answers and
    what happens to the mail.

    esmtpkit builds one handler per connection (by calling the handler
    factory with no arguments), sets L{session} on it, and then calls its
    hooks as the conversation goes. The protocol enforces the order of
    commands, parses and validates their arguments, and answers syntax and
    sequence errors (501, 503, ...) itself, so a hook is only called when its
    command is valid in the current state.

    B{Reply hooks} (all but HEADER, EOH, BODY, ABORT and DISCONNECT) return
    the reply to send: a L{esmtpkit.Reply}, a tuple C{(code, "line", ...)}, or
    L{None} for the default reply (the one L{esmtpkit.ESMTPHandler} gives).
    Raising L{esmtpkit.ReplyError} sends its reply. Any other exception is
    logged with the session id and answered with C{451 4.3.0}; the session
    goes on.

    B{Any hook} may return a L{Deferred <twisted.internet.defer.Deferred>} or
    be C{async def}. esmtpkit stops reading from the client while a hook is
    pending, so replies always go out in command order (even when the client
    pipelines), at most one hook runs at a time per connection, and a slow
    BODY hook slows the client down instead of making the server buffer the
    message. A coroutine may await Deferreds (or, under the asyncio reactor,
    futures wrapped with C{Deferred.fromFuture}).

    A reply hook accepts its command with a 2xx reply (354 for DATA); any
    other code refuses it and the state does not change.

    Addresses, domains and header values come from the network: treat them
    as hostile input (never pass them to a shell).
    """

    session = Attribute(
        "The L{esmtpkit.session.Session} of this connection, set by esmtpkit "
        "before CONNECT is called."
    )
    disconnect = Attribute(
        "Set to C{True} from any hook to close the connection once that "
        "hook's reply has been sent."
    )

    def CONNECT() -> Any:
        """
        A client has connected. Return the greeting: 220 to serve it, 554 to
        refuse service (esmtpkit then answers every command but QUIT with
        503), or 421 to close at once. The server's hostname is put at the
        start of a 2xx greeting if the text does not begin with it.
        """

    def HELO(domain: str) -> Any:
        """
        The client sent C{HELO domain}. A 2xx reply starts a new SMTP
        (not ESMTP) session; any transaction in progress was aborted first.

        @param domain: the name the client claims, as sent.
        """

    def EHLO(domain: str) -> Any:
        """
        The client sent C{EHLO domain}. On a 2xx reply esmtpkit writes the
        first line (the hostname, then this reply's first line) followed by
        the extensions it supports, then any further lines of this reply
        (extra EHLO keywords). Any transaction in progress was aborted first.

        @param domain: the name the client claims, as sent.
        """

    def MAIL(sender: str, params: Params) -> Any:
        """
        The client sent C{MAIL FROM:<sender> params}. A 2xx reply starts a
        transaction (C{session.transaction}).

        @param sender: the reverse-path without angle brackets, C{""} for the
            null sender; already checked to be a valid address.
        @param params: the ESMTP parameters, keyword upper-cased to value or
            L{None}.
        """

    def RCPT(recipient: str, params: Params) -> Any:
        """
        The client sent C{RCPT TO:<recipient> params} inside a transaction.
        A 2xx reply adds the recipient to C{session.transaction.recipients}.

        @param recipient: the forward-path without angle brackets, already
            checked to be a valid address (or C{postmaster}).
        @param params: the ESMTP parameters.
        """

    def DATA() -> Any:
        """
        The client sent DATA and the transaction has a sender and at least
        one recipient. A 354 reply lets the message in; anything else refuses
        it (the transaction stays open).
        """

    def HEADER(name: str, value: str) -> Any:
        """
        One header of the message, with continuation lines unfolded (the
        line breaks removed, the leading white space of each continuation
        line kept). No reply is sent; raise L{esmtpkit.ReplyError} to refuse
        the message.

        @param name: the field name, as sent (case kept).
        @param value: the field body after the colon and any white space that
            follows it, decoded as UTF-8 with C{surrogateescape} (so
            C{value.encode("utf-8", "surrogateescape")} gives the bytes back).
        """

    def EOH() -> Any:
        """
        The end of the message headers: the empty line after them, or the
        first line that is not a header (that line then starts the body).
        The exact header bytes are in C{session.transaction.rawHeaders}.
        """

    def BODY(chunk: bytes) -> Any:
        """
        The next piece of the message body, dot-stuffing already undone.
        Chunks are at most the configured chunk size and are not aligned to
        lines; joined, they are the body exactly, ending with the CRLF that
        precedes the terminating dot. Return a Deferred to slow the client
        down until it fires; raise L{esmtpkit.ReplyError} to refuse the
        message.
        """

    def EOM() -> Any:
        """
        The message is complete. A 2xx reply means the handler has taken
        responsibility for the message; anything else refuses it. Either way
        the transaction is over.
        """

    def ABORT() -> Any:
        """
        The current transaction ended without EOM: RSET, a new HELO/EHLO,
        QUIT, the end of the connection, or a refused message (a content hook
        raised, a limit was exceeded); also after an EOM that the shutdown
        deadline cancelled (its message was not acknowledged: do not keep
        it). Release what the transaction holds. No reply is sent.
        """

    def RSET() -> Any:
        """
        The client sent RSET. Any transaction was aborted first.
        """

    def NOOP() -> Any:
        """
        The client sent NOOP.
        """

    def VRFY(address: str) -> Any:
        """
        The client sent C{VRFY address}.
        """

    def EXPN(address: str) -> Any:
        """
        The client sent C{EXPN address}.
        """

    def HELP(topic: str | None) -> Any:
        """
        The client sent HELP, with an optional topic.
        """

    def QUIT() -> Any:
        """
        The client sent QUIT. The connection is closed after the reply. Any
        transaction was aborted first.
        """

    def UNKNOWN(line: str) -> Any:
        """
        The client sent a command esmtpkit does not know.

        @param line: the whole command line (decoded as UTF-8 with
            C{surrogateescape}).
        """

    def STARTTLS() -> Any:
        """
        The client asked to start TLS (STARTTLS is offered and valid now).
        Reply 220 to go ahead; any other reply refuses, and the session
        goes on in plaintext. After the handshake C{session.tls} describes
        the TLS layer, and the client must greet again (EHLO).
        """

    def AUTH(identity: str) -> Any:
        """
        The client proved it is C{identity} (checked by the server's
        L{twisted.cred} portal). Reply 235 to accept it, then
        C{session.authenticated} is C{identity}; any other reply (535, say)
        refuses it and counts as a failed attempt.
        """

    def DISCONNECT() -> Any:
        """
        The connection is gone, for whatever reason. Called exactly once per
        connection, last, after any pending hook has finished and after
        ABORT if a transaction was open.
        """


class IServerObserver(Interface):
    """
    A listener for what happens on a server (connections, commands and
    replies, transactions, TLS, AUTH, limits, hooks), told by every face
    (SMTP, LMTP) alike. L{esmtpkit.ServerObserver} implements every event
    as doing nothing and documents each one; subclass it, override what you
    need, and give it to the factory or service as C{observers=[...]}.

    Observers run inside the conversation: they must neither raise nor
    block.
    """

    def wants(event: str) -> bool:
        """
        Whether to be told of event C{event} (asked once per event).
        """

    def connectionOpened(session: Any) -> None:
        """A client connected."""

    def connectionRefused(session: Any, limit: str, reply: Any) -> None:
        """A connection over a connection limit was refused."""

    def connectionClosed(session: Any) -> None:
        """A connection is gone and its last hook has run."""

    def handlerFailed(session: Any, failure: Any) -> None:
        """The handler factory failed; the client got 421."""

    def commandReplied(session: Any, verb: str, reply: Any) -> None:
        """A reply went out, to command C{verb}."""

    def commandRefused(session: Any, verb: str, argument: str, reply: Any) -> None:
        """A 4xx or 5xx reply went out, to command C{verb}."""

    def transactionStarted(session: Any, transaction: Any) -> None:
        """MAIL was accepted."""

    def contentRefused(session: Any, transaction: Any, reply: Any) -> None:
        """A message was refused while its content was read."""

    def transactionEnded(
        session: Any, transaction: Any, outcome: str, replies: Any
    ) -> None:
        """A transaction is over: accepted, partial, refused or aborted."""

    def tlsStarted(session: Any) -> None:
        """A STARTTLS handshake begins."""

    def tlsEstablished(session: Any, tls: Any) -> None:
        """A TLS handshake completed."""

    def tlsFailed(session: Any) -> None:
        """A connection ended before its TLS handshake completed."""

    def authSucceeded(session: Any, mechanism: str, identity: Any) -> None:
        """AUTH succeeded."""

    def authFailed(session: Any, mechanism: str, failures: int) -> None:
        """An AUTH attempt failed."""

    def limitReached(session: Any, limit: str, detail: str) -> None:
        """A protection triggered."""

    def hookFinished(session: Any, hook: str, seconds: float) -> None:
        """A hook finished after C{seconds}."""

    def hookFailed(session: Any, hook: str, failure: Any) -> None:
        """A hook raised or failed."""
