"""
L{ESMTPProtocol}: the server side of one SMTP connection.

The commands of RFC 5321 and its extensions, each a C{do_VERB} method that
checks the syntax and the SMTP rules (sequence, limits, parameters) and
then asks the L{Conversation <esmtpkit.core.conversation.Conversation>} to
do what the command means. Messages are read by L{DataReader} and
L{ChunkReader} (L{esmtpkit.smtp.data}); STARTTLS and AUTH by
L{esmtpkit.smtp.secure}. Subclasses add commands with more C{do_VERB}
methods and EHLO keywords by extending L{ESMTPProtocol.extensions}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from ..core.content import Content
from ..reply import Reply, ReplyError, formatLines
from ..session import Params
from .address import MAX_DOMAIN
from .command import checkMailbox, parseParams, parsePath, splitCommand
from .connection import REFUSED, SMTPConnection
from .data import ChunkReader, DataReader
from .params import checkMailParams, checkRcptParams
from .secure import Security, authOffered, encrypted, secureExtensions, tlsRequired

__all__ = ["ESMTPProtocol"]

# Commands after which a client must wait for the reply even with PIPELINING
# (RFC 2920 section 3.1; BDAT is followed by its chunk, QUIT by nothing).
_MUST_WAIT = frozenset({"HELO", "EHLO", "LHLO", "DATA", "STARTTLS", "AUTH"})
# ... and what may always be followed at once (the chunk, and nothing).
_ALWAYS_PIPELINED = frozenset({"BDAT", "QUIT"})

# The EHLO keywords and extra lines after the first line, as wire text: the
# same from one connection to the next.
_EHLO_TAILS: dict[tuple[int, tuple[str, ...]], str] = {}


def _verbTable(cls: type) -> dict[str, Callable[[Any, str], None]]:
    """
    The C{do_VERB} methods of a protocol class, by verb.
    """
    return {name[3:]: getattr(cls, name) for name in dir(cls) if name.startswith("do_")}


def _syntax(text: str) -> Reply:
    return Reply(501, text, enhanced="5.5.4")


def _sequence(text: str) -> Reply:
    return Reply(503, text, enhanced="5.5.1")


_NO_REVERSE_PATH = _syntax("MAIL requires return-path")
_NO_FORWARD_PATH = _syntax("RCPT requires forward-path")
_TOO_MANY_RECIPIENTS = Reply(452, "Too many recipients", enhanced="4.5.3")
_NO_SERVICE = Reply(503, "Error: no service on this connection", enhanced="5.5.1")
_BARE_LF = Reply(500, "Bare LF in command; lines must end with CRLF", enhanced="5.5.2")
_BARE_CR = Reply(500, "Bare CR in command", enhanced="5.5.2")
_HELO_TOO_LONG = Reply(
    501, f"Domain name too long (at most {MAX_DOMAIN} octets)", enhanced="5.5.2"
)


@implementer(IHandshakeListener)
class ESMTPProtocol(SMTPConnection):
    """
    One SMTP server connection, driving one L{IESMTPHandler
    <esmtpkit.IESMTPHandler>}.
    """

    __slots__ = ()

    _verbs: ClassVar[dict[str, Callable[[Any, str], None]]] = {}
    """The C{do_VERB} methods, by verb; a subclass gets its own."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._verbs = _verbTable(cls)

    def _commandLine(self, line: bytes) -> None:
        """
        A command line: syntax and sequence checks, then its C{do_VERB}
        method (a verb without one goes to the UNKNOWN hook).
        """
        if b"\r" in line:
            self.writeReply(_BARE_CR)
            return
        if self.bareLineEnding and self.settings.bareLineEndings == "reject":
            self.writeReply(_BARE_LF)
            return
        verb, arg = splitCommand(line)
        self.verb = verb or "UNKNOWN"
        self.argument = arg
        # RFC 2920 section 3.1: after EHLO (or LHLO) with PIPELINING, a
        # client may send on before the reply to anything but the commands
        # whose reply it must wait for; otherwise only BDAT's chunk and what
        # follows QUIT.
        if (
            self.moreInput
            and self.settings.enforceSync
            and verb not in _ALWAYS_PIPELINED
            and not (
                self.session.esmtp
                and self.settings.pipelining
                and verb not in _MUST_WAIT
            )
        ):
            self.violation(f"input pipelined after {self.verb}")
            return
        if self._state == REFUSED and verb != "QUIT":
            self.writeReply(_NO_SERVICE)
            return
        method = self._verbs.get(verb)
        if method is None:
            text = line.decode("utf-8", "surrogateescape")
            self.conversation.command("UNKNOWN", (text,), self.writeReply)
        else:
            method(self, arg)

    # -- TLS and AUTH -------------------------------------------------------

    def security(self) -> Security:
        """
        The connection's STARTTLS and AUTH state (made on first use).
        """
        secure = self._secure
        if secure is None:
            secure = self._secure = Security(self)
        return secure  # type: ignore[no-any-return]

    def tlsActive(self) -> bool:
        """
        Whether this connection is encrypted (implicit TLS, or after
        STARTTLS).
        """
        return encrypted(self.transport)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is over (after STARTTLS, or on an implicit TLS
        listener).
        """
        self.security().handshakeCompleted()
        if self.draining:
            self._closeIfIdle()

    def do_STARTTLS(self, arg: str) -> None:
        self.security().startTLS(arg)

    def do_AUTH(self, arg: str) -> None:
        self.security().auth(arg)

    # -- greetings ----------------------------------------------------------

    def extensions(self) -> list[str]:
        """
        The EHLO keywords to advertise on this connection.
        """
        settings = self.settings
        keywords = []
        if settings.pipelining:
            keywords.append("PIPELINING")
        if settings.size:
            limit = settings.maxMessageSize
            keywords.append(f"SIZE {limit}" if limit else "SIZE")
        if settings.eightBitMIME:
            keywords.append("8BITMIME")
        if settings.smtputf8:
            keywords.append("SMTPUTF8")
        if settings.enhancedStatusCodes:
            keywords.append("ENHANCEDSTATUSCODES")
        if settings.chunking:
            keywords.append("CHUNKING")
            if settings.binaryMIME:
                keywords.append("BINARYMIME")
        if settings.dsn:
            keywords.append("DSN")
        if settings.limits:
            keywords.append(f"LIMITS RCPTMAX={settings.maxRecipients}")
        return keywords + secureExtensions(self)

    def _ehloReply(self, reply: Reply) -> Reply:
        """
        The EHLO reply: its first line, the extensions, then the rest of the
        handler's lines (extra keywords). All but the first line are the
        same from one connection to the next, so their wire form is made once.
        """
        tail = (*self.extensions(), *reply.lines[1:])
        if not tail:
            return reply
        key = (reply.code, tail)
        text = _EHLO_TAILS.get(key)
        if text is None:
            text = formatLines(reply.code, tail)
            if len(_EHLO_TAILS) < 64:
                _EHLO_TAILS[key] = text
        first = formatLines(reply.code, reply.lines[:1], final=False)
        wire = (first + text).encode("utf-8", "surrogateescape")
        return Reply._ofCleanLines(reply.code, (reply.lines[0], *tail), wire)

    def do_HELO(self, arg: str) -> None:
        self._hello("HELO", arg, extended=False)

    def do_EHLO(self, arg: str) -> None:
        self._hello("EHLO", arg, extended=True)

    def _hello(self, hook: str, arg: str, extended: bool) -> None:
        """
        A greeting (HELO, EHLO; LMTP's LHLO asks the EHLO hook).
        """
        if not arg:
            self.writeReply(_syntax(f"{self.verb} requires domain address"))
            return
        if not arg.isprintable() or " " in arg:
            self.writeReply(_syntax("Invalid domain name"))
            return
        if len(arg) > MAX_DOMAIN or (
            not arg.isascii() and len(arg.encode("utf-8")) > MAX_DOMAIN
        ):
            # RFC 5321 4.5.3.1.2: a domain has at most 255 octets; the name
            # goes into Received: headers, which must stay well formed.
            self.writeReply(_HELO_TOO_LONG)
            return

        def greeted(reply: Reply) -> None:
            if reply.code // 100 == 2:
                reply = self.withHostname(reply)
                if extended:
                    reply = self._ehloReply(reply)
            self.writeReply(reply, enhanced=False)

        self.conversation.hello(hook, arg, extended, greeted)

    # -- the transaction ----------------------------------------------------

    def do_MAIL(self, arg: str) -> None:
        session = self.session
        if session.heloName is None:
            greeting = "LHLO" if session.lmtp else "HELO/EHLO"
            self.writeReply(_sequence(f"Error: send {greeting} first"))
            return
        if session.transaction is not None:
            self.writeReply(_sequence("Sender already specified"))
            return
        refusal = tlsRequired(self) if self.settings.requireTLS else None
        if refusal is None and self.settings.requireAuth and not session.authenticated:
            refusal = Reply(530, "Authentication required", enhanced="5.7.0")
        if refusal is not None:
            self.writeReply(refusal)
            return
        try:
            sender, params = self._mailArguments(arg)
        except ReplyError as e:
            self.writeReply(e.reply)
            return
        self._message = None
        self.conversation.mail(sender, params, self.writeReply)

    def _mailArguments(self, arg: str) -> tuple[str, Params]:
        sender, text = parsePath(arg, "FROM", _NO_REVERSE_PATH)
        params = parseParams(text, utf8=self.settings.smtputf8)
        if params:
            checkMailParams(
                params,
                self.settings,
                self.session.esmtp,
                tls=self.tlsActive(),
                auth=authOffered(self),
                authenticated=self.session.authenticated is not None,
            )
        if sender:
            utf8 = self.settings.smtputf8 and "SMTPUTF8" in params
            checkMailbox(sender, utf8, sender=True)
        return sender, params

    def do_RCPT(self, arg: str) -> None:
        transaction = self.session.transaction
        if transaction is None:
            self.writeReply(_sequence("Need MAIL before RCPT"))
            return
        try:
            recipient, text = parsePath(arg, "TO", _NO_FORWARD_PATH)
            utf8 = self.settings.smtputf8 and "SMTPUTF8" in transaction.mailParams
            params = checkRcptParams(
                parseParams(text, utf8=utf8), self.settings, self.session.esmtp, utf8
            )
            if recipient.lower() != "postmaster":
                checkMailbox(recipient, utf8, sender=False)
        except ReplyError as e:
            self.writeReply(e.reply)
            return
        if len(transaction.recipients) >= self.settings.maxRecipients:
            self.limitReached("recipients", "sent too many recipients")
            self.writeReply(_TOO_MANY_RECIPIENTS)
            return
        self.conversation.rcpt(recipient, params, self.writeReply)

    def _transactionError(self) -> Reply | None:
        """
        Why the transaction cannot take message content now, if it cannot.
        """
        transaction = self.session.transaction
        if transaction is None:
            return _sequence("Need MAIL command")
        if not transaction.recipients:
            return _sequence("Need RCPT (recipient)")
        return None

    def do_DATA(self, arg: str) -> None:
        transaction = self.session.transaction
        refusal = _syntax("Syntax: DATA") if arg else self._transactionError()
        if refusal is None and transaction is not None:
            if self._message is not None and self._message.chunking:
                refusal = _sequence("DATA not allowed after BDAT")
            elif transaction.mailParams.get("BODY") == "BINARYMIME":
                refusal = _sequence("BINARYMIME needs BDAT, not DATA")
        if refusal is not None:
            self.writeReply(refusal)
            return
        self.conversation.data(self._dataAnswered)

    def _dataAnswered(self, reply: Reply) -> None:
        if reply.code // 100 == 3:
            self._message = self._reader = DataReader(self, Content(self.conversation))
        self.writeReply(reply)

    def do_BDAT(self, arg: str) -> None:
        words = arg.split()
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or len(words[0]) > 15
            or (len(words) == 2 and words[1].upper() != "LAST")
        ):
            # Without a size we cannot tell where the chunk ends: stop here
            # rather than read message content as commands.
            self.writeReply(_syntax("Syntax: BDAT size [LAST]"))
            self.close()
            return
        size, last = int(words[0]), len(words) == 2
        refusal = self._transactionError()
        if not self.settings.chunking or not self.session.esmtp:
            refusal = Reply(502, "CHUNKING not offered", enhanced="5.5.1")
        message = self._message
        if refusal is not None:
            ChunkReader(self, None).read(size, last, refusal)
            return
        if message is not None:
            message.read(size, last, None)
            return

        def answered(reply: Reply) -> None:
            # The first chunk opens the message through the DATA hook, which
            # must let it in (354) as for DATA.
            if reply.code // 100 == 3:
                reader = self._message = ChunkReader(self, Content(self.conversation))
                reader.read(size, last, None)
            else:
                ChunkReader(self, None).read(size, last, reply)

        # Chunk bytes are never commands, even while DATA is asked.
        self.readWith(_CHUNK_PENDING)
        self.conversation.data(answered)

    def do_RSET(self, arg: str) -> None:
        if arg:
            self.writeReply(_syntax("Syntax: RSET"))
            return
        self.conversation.reset("RSET", self.writeReply)

    def do_NOOP(self, arg: str) -> None:
        self.conversation.command("NOOP", (), self.writeReply)

    def do_VRFY(self, arg: str) -> None:
        self._addressQuery("VRFY", arg)

    def do_EXPN(self, arg: str) -> None:
        self._addressQuery("EXPN", arg)

    def _addressQuery(self, verb: str, arg: str) -> None:
        if not arg:
            self.writeReply(_syntax(f"{verb} requires an address"))
            return
        self.conversation.command(verb, (arg,), self.writeReply)

    def do_HELP(self, arg: str) -> None:
        self.conversation.command("HELP", (arg or None,), self.writeReply)

    def do_QUIT(self, arg: str) -> None:
        if arg:
            self.writeReply(_syntax("Syntax: QUIT"))
            return

        def bye(reply: Reply) -> None:
            self.writeReply(reply)
            self.close()

        self.conversation.reset("QUIT", bye)


class _ChunkPending:
    """
    The reader while the DATA hook of a first BDAT chunk is pending: input
    is paused then, so it never reads anything.
    """

    def lineReceived(self, line: bytes) -> None:
        raise AssertionError("input is paused")

    def rawDataReceived(self, data: bytes) -> None:
        raise AssertionError("input is paused")

    def lineTooLong(self) -> bool:
        return False


_CHUNK_PENDING: Any = _ChunkPending()


ESMTPProtocol._verbs = _verbTable(ESMTPProtocol)
