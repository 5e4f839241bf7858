"""
The chunking property: what a handler sees, and what the server answers, must
not depend on how TCP split the bytes of a session.

Hypothesis generates whole sessions (EHLO, transactions with awkward
messages, RSET/NOOP and error commands sprinkled in, pipelined commands right
after the end of data, QUIT). Each session is fed to an in-memory server all at
once, byte by byte and in random pieces, with hooks answering synchronously,
with Deferreds fired later by the test, and as C{async def} coroutines, with
the default and with tiny chunk sizes. Every run must give the same hook calls
(consecutive BODY chunks joined) and the same server output bytes, and both
must match a model of the session written independently of the parser.

Feeding a whole session at once breaks RFC 2920 (the client must wait after
EHLO and DATA), so those runs turn C{enforceSync} off; one more property
feeds the same sessions as a correct client would, with C{enforceSync} on.
Messages may hold bare CR and LF: each run draws the bare line ending
policy, and the model knows what each does (C{normalize}: the handler sees
the message with bare LF made CRLF and bare CR dropped; C{reject}: the
message is refused with 550 after its end, ABORT instead of EOM, and the
handler never saw a bare line ending). How much content a refused message
delivered before its refusal may depend on the reads, so comparisons
between runs leave those content calls out (L{stable}).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from esmtpkit import ESMTPHandler, IESMTPHandler, Reply
from esmtpkit.testing import SMTPTestConnection, dotStuff, parseReplies

Call = tuple[str, tuple[Any, ...]]

EOM_REPLY = Reply(250, "Message queued", enhanced="2.0.0")
"""
The EOM reply of the recording handlers: fixed, so that the server output
does not carry the random transaction id of the default reply.
"""

BOUNDED = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALLER = settings(BOUNDED, max_examples=100)


# -- handlers that record their calls -------------------------------------


class Gate:
    """
    Decides how each hook answers: at once (C{"now"}), with an already fired
    Deferred (C{"fired"}), or with a Deferred that stays pending until
    L{drain} fires it (C{"later"}). The modes are used in turn.

    @ivar overlapping: set if a hook was called while another one's Deferred
        was still pending (the protocol promises at most one at a time).
    """

    def __init__(self, modes: Sequence[str] = ("now",)) -> None:
        self.modes = tuple(modes)
        self.count = 0
        self.pending: deque[tuple[Deferred[Any], Any]] = deque()
        self.overlapping = False

    def _mode(self) -> str:
        if self.pending:
            self.overlapping = True
        mode = self.modes[self.count % len(self.modes)]
        self.count += 1
        return mode

    def answer(self, value: Any) -> Any:
        """
        What a plain hook returns to answer C{value}.
        """
        mode = self._mode()
        if mode == "now":
            return value
        if mode == "fired":
            return succeed(value)
        d: Deferred[Any] = Deferred()
        self.pending.append((d, value))
        return d

    def wait(self) -> Deferred[Any]:
        """
        What an C{async def} hook awaits before answering.
        """
        mode = self._mode()
        if mode != "later":
            return succeed(None)
        d: Deferred[Any] = Deferred()
        self.pending.append((d, None))
        return d

    def drain(self, limit: int = 100_000) -> None:
        """
        Fire pending Deferreds (and those their firing leads to) until none
        is left.
        """
        for _ in range(limit):
            if not self.pending:
                return
            d, value = self.pending.popleft()
            d.callback(value)
        raise AssertionError("hooks kept pending after {limit} firings")


def _params(params: dict[str, str | None]) -> tuple[tuple[str, str | None], ...]:
    return tuple(sorted(params.items()))


class RecordingHandler(ESMTPHandler):
    """
    Records every hook call as C{(name, args)}; answers through a L{Gate}
    with the default reply (None), or L{EOM_REPLY} for EOM.
    """

    def __init__(self, calls: list[Call], gate: Gate) -> None:
        self.calls = calls
        self.gate = gate

    def _hook(self, name: str, args: tuple[Any, ...], value: Any = None) -> Any:
        self.calls.append((name, args))
        return self.gate.answer(value)

    def CONNECT(self) -> Any:
        return self._hook("CONNECT", ())

    def HELO(self, domain: str) -> Any:
        return self._hook("HELO", (domain,))

    def EHLO(self, domain: str) -> Any:
        return self._hook("EHLO", (domain,))

    def MAIL(self, sender: str, params: Any) -> Any:
        return self._hook("MAIL", (sender, _params(params)))

    def RCPT(self, recipient: str, params: Any) -> Any:
        return self._hook("RCPT", (recipient, _params(params)))

    def DATA(self) -> Any:
        return self._hook("DATA", ())

    def HEADER(self, name: str, value: str) -> Any:
        return self._hook("HEADER", (name, value))

    def EOH(self) -> Any:
        transaction = self.session.transaction
        assert transaction is not None
        return self._hook("EOH", (transaction.rawHeaders,))

    def BODY(self, chunk: bytes) -> Any:
        return self._hook("BODY", (chunk,))

    def EOM(self) -> Any:
        return self._hook("EOM", (), EOM_REPLY)

    def ABORT(self) -> Any:
        return self._hook("ABORT", ())

    def RSET(self) -> Any:
        return self._hook("RSET", ())

    def NOOP(self) -> Any:
        return self._hook("NOOP", ())

    def VRFY(self, address: str) -> Any:
        return self._hook("VRFY", (address,))

    def EXPN(self, address: str) -> Any:
        return self._hook("EXPN", (address,))

    def HELP(self, topic: str | None) -> Any:
        return self._hook("HELP", (topic,))

    def QUIT(self) -> Any:
        return self._hook("QUIT", ())

    def UNKNOWN(self, line: str) -> Any:
        return self._hook("UNKNOWN", (line,))

    def DISCONNECT(self) -> Any:
        return self._hook("DISCONNECT", ())


class HeaderlessRecordingHandler(RecordingHandler):
    """
    A L{RecordingHandler} without a HEADER hook, so that the server may take
    a plain header section in one piece: it records the fields the
    transaction collected as HEADER calls just before EOH, which must give
    the same calls as the hook would have.
    """

    HEADER = ESMTPHandler.HEADER  # ESMTPHandler's: the server skips it

    def EOH(self) -> Any:
        transaction = self.session.transaction
        assert transaction is not None
        for name, value in transaction.headers:
            self.calls.append(("HEADER", (name, value)))
        return super().EOH()


class BodylessRecordingHandler(HeaderlessRecordingHandler):
    """
    A L{HeaderlessRecordingHandler} without a BODY hook either, so that the
    server may count body bytes without queueing them for the hook: it
    records the message size at EOM as a C{("SIZE", (size,))} call.
    """

    BODY = ESMTPHandler.BODY  # ESMTPHandler's: the server skips it

    def EOM(self) -> Any:
        transaction = self.session.transaction
        assert transaction is not None
        self.calls.append(("SIZE", (transaction.size,)))
        return super().EOM()


def withoutBodies(calls: list[Call]) -> list[Call]:
    """
    What L{BodylessRecordingHandler} would have recorded of a session that
    gave C{calls} to a L{RecordingHandler}: no BODY calls, and the size of
    each message (its header section and body) before its EOM.
    """
    out: list[Call] = []
    size = 0
    for name, args in calls:
        if name == "EOH":
            size = len(args[0])
        elif name == "BODY":
            size += len(args[0])
            continue
        elif name == "EOM":
            out.append(("SIZE", (size,)))
        out.append((name, args))
    return out


@implementer(IESMTPHandler)
class AsyncRecordingHandler:
    """
    Like L{RecordingHandler}, but every hook is an C{async def} that awaits
    the L{Gate} (a pending Deferred in C{"later"} mode) before answering.
    It provides L{IESMTPHandler} directly rather than subclassing
    L{ESMTPHandler}.
    """

    session: Any
    disconnect = False

    def __init__(self, calls: list[Call], gate: Gate) -> None:
        self.calls = calls
        self.gate = gate

    async def _hook(self, name: str, args: tuple[Any, ...], value: Any = None) -> Any:
        self.calls.append((name, args))
        await self.gate.wait()
        return value

    async def CONNECT(self) -> Any:
        return await self._hook("CONNECT", ())

    async def HELO(self, domain: str) -> Any:
        return await self._hook("HELO", (domain,))

    async def EHLO(self, domain: str) -> Any:
        return await self._hook("EHLO", (domain,))

    async def MAIL(self, sender: str, params: Any) -> Any:
        return await self._hook("MAIL", (sender, _params(params)))

    async def RCPT(self, recipient: str, params: Any) -> Any:
        return await self._hook("RCPT", (recipient, _params(params)))

    async def DATA(self) -> Any:
        return await self._hook("DATA", ())

    async def HEADER(self, name: str, value: str) -> Any:
        return await self._hook("HEADER", (name, value))

    async def EOH(self) -> Any:
        transaction = self.session.transaction
        assert transaction is not None
        return await self._hook("EOH", (transaction.rawHeaders,))

    async def BODY(self, chunk: bytes) -> Any:
        return await self._hook("BODY", (chunk,))

    async def EOM(self) -> Any:
        return await self._hook("EOM", (), EOM_REPLY)

    async def ABORT(self) -> Any:
        return await self._hook("ABORT", ())

    async def RSET(self) -> Any:
        return await self._hook("RSET", ())

    async def NOOP(self) -> Any:
        return await self._hook("NOOP", ())

    async def VRFY(self, address: str) -> Any:
        return await self._hook("VRFY", (address,))

    async def EXPN(self, address: str) -> Any:
        return await self._hook("EXPN", (address,))

    async def HELP(self, topic: str | None) -> Any:
        return await self._hook("HELP", (topic,))

    async def QUIT(self) -> Any:
        return await self._hook("QUIT", ())

    async def UNKNOWN(self, line: str) -> Any:
        return await self._hook("UNKNOWN", (line,))

    async def STARTTLS(self) -> Any:
        return await self._hook("STARTTLS", ())

    async def AUTH(self, identity: str) -> Any:
        return await self._hook("AUTH", (identity,))

    async def DISCONNECT(self) -> Any:
        return await self._hook("DISCONNECT", ())


# -- the session model ------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """
    A message as the client means it (before dot-stuffing).

    @ivar data: the message bytes.
    @ivar headers: the HEADER calls it must cause, or L{None} when the
        generator did not build it from known headers.
    @ivar rawHeaders: the expected C{transaction.rawHeaders}, or L{None}.
    """

    data: bytes
    headers: tuple[tuple[str, str], ...] | None = None
    rawHeaders: bytes | None = None

    @property
    def received(self) -> bytes:
        """
        The message the server must recover: C{data}, with the CRLF that
        dot-stuffing adds when it does not end with one.
        """
        if self.data and not self.data.endswith(b"\r\n"):
            return self.data + b"\r\n"
        return self.data

    @property
    def bare(self) -> bool:
        """
        Whether the message holds a bare CR or a bare LF.
        """
        return hasBareLineEnding(self.received)

    def underPolicy(self, policy: str) -> Message | Rejected:
        """
        What the handler must get under the bare line ending C{policy}:
        this message, the message with its line endings normalised (the
        header calls are then not predicted, only the bytes), or a
        L{Rejected} refusal.
        """
        if not self.bare:
            return self
        if policy == "reject":
            return Rejected(self)
        return Message(normalizedLineEndings(self.received))


@dataclass(frozen=True)
class Rejected:
    """
    A message refused for its bare line endings: some content calls (a
    prefix of the message without bare line endings), then ABORT, and a
    550 5.5.2 after its end.
    """

    message: Message


BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def hasBareLineEnding(data: bytes) -> bool:
    """
    Whether C{data} holds a CR not followed by LF or an LF not preceded by
    CR.
    """
    return BARE.search(data) is not None


def normalizedLineEndings(data: bytes) -> bytes:
    """
    C{data} with each bare LF made CRLF and each bare CR dropped (CRLF
    kept), byte by byte.
    """
    out = bytearray()
    index = 0
    while index < len(data):
        byte = data[index]
        if data[index : index + 2] == b"\r\n":
            out += b"\r\n"
            index += 2
            continue
        if byte == 0x0A:
            out += b"\r\n"
        elif byte != 0x0D:
            out.append(byte)
        index += 1
    return bytes(out)


@dataclass(frozen=True)
class Step:
    """
    One command of a session, the hook calls and reply codes it must cause,
    and the message that follows it (for an accepted DATA).
    """

    line: bytes
    calls: tuple[Call, ...]
    codes: tuple[int, ...]
    message: Message | None = None


@dataclass(frozen=True)
class SMTPSession:
    """
    A whole generated session.
    """

    steps: tuple[Step, ...]

    def wire(self) -> bytes:
        """
        The bytes the client sends.
        """
        out = []
        for step in self.steps:
            out.append(step.line + b"\r\n")
            if step.message is not None:
                out.append(dotStuff(step.message.data))
        return b"".join(out)

    def segments(self) -> list[bytes]:
        """
        The bytes the client sends, cut where a correct client waits for
        replies (RFC 2920): after HELO, EHLO and DATA, and, without
        PIPELINING (after HELO), after every command and message.
        """
        out: list[bytes] = []
        current = b""
        esmtp = False
        for step in self.steps:
            current += step.line + b"\r\n"
            verb = step.line.split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"HELO"):
                esmtp = verb == b"EHLO"
            if verb in (b"EHLO", b"HELO", b"DATA") or not esmtp:
                out.append(current)
                current = b""
            if step.message is not None:
                current += dotStuff(step.message.data)
                if not esmtp:
                    out.append(current)
                    current = b""
        if current:
            out.append(current)
        return out

    def expectedCalls(self, policy: str) -> list[Call | Message | Rejected]:
        """
        The hook calls of the session under the bare line ending C{policy},
        with a L{Message} standing for the HEADER/EOH/BODY calls of each
        message and a L{Rejected} for those of a refused message.
        """
        expected: list[Call | Message | Rejected] = [("CONNECT", ())]
        for step in self.steps:
            expected.extend(step.calls)
            if step.message is not None:
                message = step.message.underPolicy(policy)
                expected.append(message)
                if isinstance(message, Rejected):
                    expected.append(("ABORT", ()))
                else:
                    expected.append(("EOM", ()))
        expected.append(("DISCONNECT", ()))
        return expected

    def expectedCodes(self, policy: str) -> list[int]:
        """
        The reply codes, greeting first.
        """
        codes = [220]
        for step in self.steps:
            codes.extend(step.codes)
            if step.message is not None:
                if isinstance(step.message.underPolicy(policy), Rejected):
                    codes.append(550)
                else:
                    codes.append(EOM_REPLY.code)
        return codes


def _noCRLF(data: bytes) -> bytes:
    while b"\r\n" in data:
        data = data.replace(b"\r\n", b"\n")
    return data


# Lines that stress dot-stuffing, the end-of-data marker and line ends.
AWKWARD_LINES = [
    b"",
    b".",
    b"..",
    b"...",
    b".x",
    b". ",
    b" .",
    b"\r",
    b"\n",
    b".\r",
    b".\n",
    b"\n.",
    b"\n.\n",
    b"\r.\r",
    b"\r.",
    b"x\r",
    b"\n\r",
    b"\x00.\x00",
    b"From someone",
    b"Subject: looks like a header",
    b"\tindented",
    b"\xff\xfe\x80",
]

# Near misses of <CR><LF>.<CR><LF> that a client's dot-stuffing leaves alone
# (it only doubles a dot after CRLF), and what a smuggler puts after them.
NEAR_MISSES = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n", b"\n.", b"\n\n.\r\n"]
SMUGGLED = (
    b"MAIL FROM:<evil@example.org>\r\n"
    b"RCPT TO:<victim@example.net>\r\n"
    b"DATA\r\n"
    b"Subject: smuggled\r\n"
)

bodyLines = st.one_of(
    st.sampled_from(AWKWARD_LINES),
    st.binary(max_size=24).map(_noCRLF),
    st.text(max_size=24).map(lambda t: _noCRLF(t.encode("utf-8"))),
    st.integers(100, 1500).map(lambda n: b"L" * n),
)

NAME_ALPHABET = [chr(c) for c in range(0x21, 0x7F) if c != 0x3A]
headerNames = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=10)
headerBytes = st.one_of(
    st.binary(max_size=20).map(_noCRLF),
    st.sampled_from(
        [b"", b"x", b" spaced ", b"\t", b"a.b", b"=?utf-8?q?x?=", b"\xc3\xa9"]
    ),
)


@st.composite
def headerFields(draw: Any) -> tuple[bytes, tuple[str, str]]:
    """
    One header field, possibly folded: its lines (joined with CRLF, no final
    CRLF) and the C{(name, value)} HEADER must receive.
    """
    name = draw(headerNames)
    first = draw(headerBytes)
    folds = draw(
        st.lists(
            st.tuples(st.sampled_from([b" ", b"\t", b"  "]), headerBytes),
            max_size=3,
        )
    )
    lines = [name.encode("ascii") + b": " + first]
    lines += [ws + rest for ws, rest in folds]
    value = first.lstrip(b" \t") + b"".join(ws + rest for ws, rest in folds)
    return b"\r\n".join(lines), (name, value.decode("utf-8", "surrogateescape"))


@st.composite
def messages(draw: Any) -> Message:
    """
    A message: known headers, a blank line and a body; known headers only;
    arbitrary lines (which may or may not look like headers); or a
    smuggling attempt (a near-miss end-of-data marker, after the headers or
    in the body, then a second envelope).
    """
    kind = draw(st.sampled_from(["full", "headersOnly", "lines", "smuggle"]))
    endsWithCRLF = draw(st.booleans())
    if kind == "smuggle":
        fields = draw(st.lists(headerFields(), max_size=2))
        head = b"".join(lines + b"\r\n" for lines, _ in fields)
        before = draw(st.sampled_from([b"", b"\r\n", b"\r\nbody\r\n", b"x"]))
        return Message(head + before + draw(st.sampled_from(NEAR_MISSES)) + SMUGGLED)
    if kind == "lines":
        lines = draw(st.lists(bodyLines, max_size=12))
        data = b"\r\n".join(lines) + (b"\r\n" if endsWithCRLF and lines else b"")
        return Message(data)
    fields = draw(st.lists(headerFields(), min_size=1, max_size=5))
    head = b"".join(lines + b"\r\n" for lines, _ in fields)
    headers = tuple(header for _, header in fields)
    if kind == "headersOnly":
        return Message(head, headers, head)
    lines = draw(st.lists(bodyLines, max_size=12))
    body = b"\r\n".join(lines) + (b"\r\n" if endsWithCRLF and lines else b"")
    return Message(head + b"\r\n" + body, headers, head + b"\r\n")


SENDERS = ["", "alice@example.org", "b.ob+tag@sub.example.com"]
RECIPIENTS = ["carol@example.net", "postmaster", "d-e@example.org"]
MAIL_VERBS = [b"MAIL FROM:", b"mail from:", b"Mail From:"]
RCPT_VERBS = [b"RCPT TO:", b"rcpt to:"]
MAIL_PARAMS: list[tuple[bytes, tuple[tuple[str, str | None], ...]]] = [
    (b"", ()),
    (b" SIZE=1234", (("SIZE", "1234"),)),
    (b" BODY=8bitmime", (("BODY", "8BITMIME"),)),
    (b" BODY=7BIT SIZE=99", (("BODY", "7BIT"), ("SIZE", "99"))),
]

# Commands valid with no transaction open: (line, calls, codes).
IDLE_COMMANDS: list[Step] = [
    Step(b"NOOP", (("NOOP", ()),), (250,)),
    Step(b"noop", (("NOOP", ()),), (250,)),
    Step(b"RSET", (("RSET", ()),), (250,)),
    Step(b"HELP", (("HELP", (None,)),), (214,)),
    Step(b"VRFY someone", (("VRFY", ("someone",)),), (252,)),
    Step(b"EXPN list", (("EXPN", ("list",)),), (502,)),
    Step(b"XYZZY plugh", (("UNKNOWN", ("XYZZY plugh",)),), (500,)),
    Step(b"RCPT TO:<x@example.org>", (), (503,)),
    Step(b"DATA", (), (503,)),
]
# Commands that leave an open transaction open.
TRANSACTION_COMMANDS: list[Step] = [
    Step(b"NOOP", (("NOOP", ()),), (250,)),
    Step(b"MAIL FROM:<other@example.org>", (), (503,)),
    Step(b"VRFY someone", (("VRFY", ("someone",)),), (252,)),
]


@st.composite
def sessions(draw: Any) -> SMTPSession:
    """
    A session: EHLO (or HELO), one to three transactions (delivered, reset with RSET
    or EHLO), commands sprinkled between, QUIT (possibly with a transaction
    open).
    """
    steps: list[Step] = []
    domain = draw(st.sampled_from(["client.example", "c", "[192.0.2.7]"]))
    hello = draw(st.sampled_from(["EHLO", "EHLO", "HELO"]))
    steps.append(Step(f"{hello} {domain}".encode(), ((hello, (domain,)),), (250,)))
    count = draw(st.integers(1, 3))
    openAtQuit = False
    for index in range(count):
        steps += draw(st.lists(st.sampled_from(IDLE_COMMANDS), max_size=2))
        sender = draw(st.sampled_from(SENDERS))
        # ESMTP parameters need EHLO.
        paramText, params = draw(
            st.sampled_from(MAIL_PARAMS if hello == "EHLO" else MAIL_PARAMS[:1])
        )
        verb = draw(st.sampled_from(MAIL_VERBS))
        steps.append(
            Step(
                verb + b"<" + sender.encode() + b">" + paramText,
                (("MAIL", (sender, params)),),
                (250,),
            )
        )
        for recipient in draw(
            st.lists(st.sampled_from(RECIPIENTS), min_size=1, max_size=3)
        ):
            steps += draw(st.lists(st.sampled_from(TRANSACTION_COMMANDS), max_size=1))
            steps.append(
                Step(
                    draw(st.sampled_from(RCPT_VERBS))
                    + b"<"
                    + recipient.encode()
                    + b">",
                    (("RCPT", (recipient, ())),),
                    (250,),
                )
            )
        last = index == count - 1
        ending = draw(
            st.sampled_from(
                ["deliver", "deliver", "rset", "ehlo"] + (["quit"] if last else [])
            )
        )
        if ending == "deliver":
            steps.append(Step(b"DATA", (("DATA", ()),), (354,), draw(messages())))
        elif ending == "rset":
            steps.append(Step(b"RSET", (("ABORT", ()), ("RSET", ())), (250,)))
        elif ending == "ehlo":
            steps.append(
                Step(b"EHLO again", (("ABORT", ()), ("EHLO", ("again",))), (250,))
            )
        else:
            openAtQuit = True
    if not openAtQuit:
        steps += draw(st.lists(st.sampled_from(IDLE_COMMANDS), max_size=2))
    quitCalls: tuple[Call, ...] = (("QUIT", ()),)
    if openAtQuit:
        quitCalls = (("ABORT", ()), ("QUIT", ()))
    steps.append(Step(b"QUIT", quitCalls, (221,)))
    return SMTPSession(tuple(steps))


# -- running a session ------------------------------------------------------


@dataclass
class Run:
    """
    The outcome of feeding a session to a server.

    @ivar calls: the hook calls as recorded.
    @ivar output: all server output bytes.
    """

    calls: list[Call]
    output: bytes
    conn: SMTPTestConnection
    gate: Gate

    @property
    def normalized(self) -> list[Call]:
        """
        The calls with consecutive BODY chunks joined.
        """
        return normalize(self.calls)

    @property
    def stable(self) -> list[Call]:
        """
        L{normalized}, without the content calls of refused messages.
        """
        return stable(self.calls)

    @property
    def bodyChunks(self) -> list[bytes]:
        return [args[0] for name, args in self.calls if name == "BODY"]


def normalize(calls: list[Call]) -> list[Call]:
    """
    C{calls} with runs of consecutive BODY calls joined into one.
    """
    out: list[Call] = []
    for name, args in calls:
        if name == "BODY" and out and out[-1][0] == "BODY":
            out[-1] = ("BODY", (out[-1][1][0] + args[0],))
        else:
            out.append((name, args))
    return out


CONTENT_HOOKS = ("HEADER", "EOH", "BODY")


def stable(calls: list[Call]) -> list[Call]:
    """
    C{calls} normalised, with the content calls (HEADER, EOH, BODY) right
    before an ABORT left out: how much of a refused message reached the
    handler before the refusal may depend on how the bytes were read.
    """
    out: list[Call] = []
    for call in normalize(calls):
        if call[0] == "ABORT":
            while out and out[-1][0] in CONTENT_HOOKS:
                out.pop()
        out.append(call)
    return out


def pieces(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """
    C{data} cut into pieces of the given sizes, used in turn.
    """
    out = []
    pos = index = 0
    while pos < len(data):
        size = sizes[index % len(sizes)]
        out.append(data[pos : pos + size])
        pos += size
        index += 1
    return out


def feed(
    chunks: Sequence[bytes],
    handlerClass: type = RecordingHandler,
    modes: Sequence[str] = ("now",),
    drainAfter: Sequence[bool] = (True,),
    **overrides: Any,
) -> Run:
    """
    Feed C{chunks} (one read each) to a fresh in-memory server whose handler
    records its calls; fire pending hook Deferreds after a read when
    C{drainAfter} (used in turn) says so, and at the end.

    The client does not wait for replies, so C{enforceSync} is off unless
    C{overrides} say otherwise; and the model knows no error budget (a
    session of many refusals would be slowed down past the soft limit, on a
    clock nobody advances), so that is off too.
    """
    calls: list[Call] = []
    gate = Gate(modes)
    overrides.setdefault("enforceSync", False)
    overrides.setdefault("softErrorLimit", 0)
    overrides.setdefault("hardErrorLimit", 0)
    conn = SMTPTestConnection(lambda: handlerClass(calls, gate), **overrides)
    gate.drain()  # a well-behaved client waits for the greeting
    for index, chunk in enumerate(chunks):
        conn.send(chunk)
        if drainAfter[index % len(drainAfter)]:
            gate.drain()
    gate.drain()
    return Run(calls, conn.transport.value(), conn, gate)


# -- checking a run against the model ---------------------------------------


def checkModel(session: SMTPSession, run: Run, policy: str) -> None:
    """
    Check a run against the session model under the bare line ending
    C{policy}: the exact hook calls (messages recovered byte for byte), the
    reply codes, and a closed connection.
    """
    actual = run.normalized
    expected = session.expectedCalls(policy)
    position = 0
    for item in expected:
        if isinstance(item, Message):
            position = _checkMessage(item, actual, position)
            continue
        if isinstance(item, Rejected):
            position = _checkRejected(item.message, actual, position)
            continue
        assert position < len(actual), f"missing call {item!r}; calls: {actual!r}"
        assert actual[position] == item, (
            f"call {position}: expected {item!r}, got {actual[position]!r}"
        )
        position += 1
    assert position == len(actual), f"unexpected calls: {actual[position:]!r}"

    replies, rest = parseReplies(run.output)
    assert rest == b""
    assert [r.code for r in replies] == session.expectedCodes(policy)
    for reply in replies:
        if reply.code == 550:
            assert reply.enhanced == "5.5.2", reply
    assert run.conn.closed
    assert not run.gate.overlapping, "a hook was called while another was pending"
    assert not run.gate.pending
    assert all(chunk for chunk in run.bodyChunks), "empty BODY chunk"


def _checkMessage(message: Message, actual: list[Call], position: int) -> int:
    """
    Match the HEADER*, EOH, BODY? calls of one message starting at
    C{actual[position]}; return the position after them.
    """
    headers = []
    while position < len(actual) and actual[position][0] == "HEADER":
        headers.append(actual[position][1])
        position += 1
    assert position < len(actual) and actual[position][0] == "EOH", (
        f"expected EOH at {position}: {actual[position:]!r}"
    )
    rawHeaders = actual[position][1][0]
    position += 1
    body = b""
    if position < len(actual) and actual[position][0] == "BODY":
        body = actual[position][1][0]
        position += 1
    assert rawHeaders + body == message.received, (
        f"message not recovered exactly: {rawHeaders + body!r} != {message.received!r}"
    )
    if message.headers is not None:
        assert tuple(headers) == message.headers
        assert rawHeaders == message.rawHeaders
    return position


def _checkRejected(message: Message, actual: list[Call], position: int) -> int:
    """
    Match the content calls of a message refused for a bare line ending,
    starting at C{actual[position]} and up to (not including) the ABORT
    that must follow them: HEADER*, then possibly EOH and BODY, giving a
    prefix of the message that holds no bare line ending. Return the
    position of the ABORT.
    """
    headers = []
    while position < len(actual) and actual[position][0] == "HEADER":
        headers.append(actual[position][1])
        position += 1
    if message.headers is not None:
        assert tuple(headers) == message.headers[: len(headers)], headers
    if position < len(actual) and actual[position][0] == "EOH":
        delivered = actual[position][1][0]
        position += 1
        if position < len(actual) and actual[position][0] == "BODY":
            delivered += actual[position][1][0]
            position += 1
        assert message.received.startswith(delivered), (
            f"refused message: {delivered!r} is not a prefix of {message.received!r}"
        )
        assert not hasBareLineEnding(delivered), delivered
    assert position < len(actual) and actual[position] == ("ABORT", ()), (
        f"expected ABORT after a refused message at {position}: {actual[position:]!r}"
    )
    return position


# -- the properties -----------------------------------------------------------

policies = st.sampled_from(["reject", "normalize"])

sizeLists = st.lists(st.integers(1, 64), min_size=1, max_size=40)
modeLists = st.lists(st.sampled_from(["now", "fired", "later"]), min_size=1, max_size=8)
drainLists = st.lists(st.booleans(), min_size=1, max_size=8)


def _smuggling(data: bytes) -> SMTPSession:
    """
    EHLO, one transaction whose message is C{data}, QUIT.
    """
    return SMTPSession(
        (
            Step(b"EHLO c.example", (("EHLO", ("c.example",)),), (250,)),
            Step(b"MAIL FROM:<>", (("MAIL", ("", ())),), (250,)),
            Step(
                b"RCPT TO:<carol@example.net>",
                (("RCPT", ("carol@example.net", ())),),
                (250,),
            ),
            Step(b"DATA", (("DATA", ()),), (354,), Message(data)),
            Step(b"QUIT", (("QUIT", ()),), (221,)),
        )
    )


@BOUNDED
@given(session=sessions(), sizes=sizeLists, policy=policies)
# A near miss right where the header section ends (a bare-LF blank line).
@example(session=_smuggling(b"\n." + SMUGGLED), sizes=[1], policy="normalize")
@example(
    session=_smuggling(b"A: b\r\n\n.\r\n" + SMUGGLED), sizes=[3], policy="normalize"
)
@example(session=_smuggling(b"junk\n.\r\n" + SMUGGLED), sizes=[5], policy="normalize")
@example(session=_smuggling(b"\n.\r\n" + SMUGGLED), sizes=[2], policy="reject")
def test_splitsDoNotMatter(session: SMTPSession, sizes: list[int], policy: str) -> None:
    """
    All at once, byte by byte and in random pieces, a session gives the same
    hook calls and server output, and they match the model (messages
    recovered exactly after dot-stuffing).
    """
    wire = session.wire()
    whole = feed([wire], bareLineEndings=policy)
    checkModel(session, whole, policy)
    byteByByte = feed(pieces(wire, [1]), bareLineEndings=policy)
    checkModel(session, byteByByte, policy)
    assert byteByByte.stable == whole.stable
    assert byteByByte.output == whole.output
    split = feed(pieces(wire, sizes), bareLineEndings=policy)
    checkModel(session, split, policy)
    assert split.stable == whole.stable
    assert split.output == whole.output


@BOUNDED
@given(session=sessions(), sizes=sizeLists, policy=policies)
@example(
    session=_smuggling(b"A: b\r\n c\r\nD: e\r\n\r\nbody\r\n"),
    sizes=[7],
    policy="reject",
)
@example(session=_smuggling(b"A: b\r\n.\r\n" + SMUGGLED), sizes=[64], policy="reject")
@example(
    session=_smuggling(b"A: b\r\n\r\n.\r\n" + SMUGGLED), sizes=[3], policy="reject"
)
def test_withoutHeaderHook(session: SMTPSession, sizes: list[int], policy: str) -> None:
    """
    A handler without a HEADER hook, whose header sections the server may
    take in one piece when a read holds them whole, sees the same fields,
    header bytes and body, and the client the same replies, as a handler
    with the hook (which gets them line by line), however the session is
    split.
    """
    wire = session.wire()
    withHook = feed([wire], bareLineEndings=policy)
    for chunks in ([wire], pieces(wire, [1]), pieces(wire, sizes)):
        run = feed(chunks, HeaderlessRecordingHandler, bareLineEndings=policy)
        checkModel(session, run, policy)
        assert run.output == withHook.output
        assert run.stable == withHook.stable


@SMALLER
@given(
    session=sessions(),
    sizes=sizeLists,
    modes=modeLists,
    drainAfter=drainLists,
    policy=policies,
)
def test_withoutHeaderHookDeferred(
    session: SMTPSession,
    sizes: list[int],
    modes: list[str],
    drainAfter: list[bool],
    policy: str,
) -> None:
    """
    The same with hooks answering by Deferreds fired later (a 354 that
    comes late finds the header section already waiting, whole).
    """
    wire = session.wire()
    withHook = feed([wire], bareLineEndings=policy)
    for chunks in ([wire], pieces(wire, sizes)):
        run = feed(
            chunks,
            HeaderlessRecordingHandler,
            modes=modes,
            drainAfter=drainAfter,
            bareLineEndings=policy,
        )
        checkModel(session, run, policy)
        assert run.output == withHook.output
        assert run.stable == withHook.stable


@BOUNDED
@given(
    session=sessions(),
    sizes=sizeLists,
    modes=modeLists,
    drainAfter=drainLists,
    policy=policies,
)
def test_withoutContentHooks(
    session: SMTPSession,
    sizes: list[int],
    modes: list[str],
    drainAfter: list[bool],
    policy: str,
) -> None:
    """
    A handler with neither HEADER nor BODY hook (the body is counted, not
    queued for a hook, when nothing else waits) sees the same calls,
    fields, header bytes and message sizes, and the client the same
    replies, as a handler with both hooks, however the session is split and
    whether hooks answer at once or later.
    """
    wire = session.wire()
    withHooks = feed([wire], bareLineEndings=policy)
    expected = stable(withoutBodies(withHooks.calls))
    for chunks in ([wire], pieces(wire, [1]), pieces(wire, sizes)):
        for hookModes, drains in ((("now",), (True,)), (modes, drainAfter)):
            run = feed(
                chunks,
                BodylessRecordingHandler,
                modes=hookModes,
                drainAfter=drains,
                bareLineEndings=policy,
            )
            assert run.output == withHooks.output
            assert stable(run.calls) == expected
            assert run.conn.closed
            assert not run.gate.pending


@SMALLER
@given(
    session=sessions(),
    sizes=sizeLists,
    modes=modeLists,
    drainAfter=drainLists,
    policy=policies,
)
def test_correctClient(
    session: SMTPSession,
    sizes: list[int],
    modes: list[str],
    drainAfter: list[bool],
    policy: str,
) -> None:
    """
    A client that waits for replies where RFC 2920 says it must (after
    HELO, EHLO and DATA; after everything without PIPELINING), in random
    pieces, is never taken for one that breaks synchronization
    (C{enforceSync} on) and gets the same calls and output as the whole
    session fed at once with C{enforceSync} off.
    """
    reference = feed([session.wire()], bareLineEndings=policy)
    calls: list[Call] = []
    gate = Gate(modes)
    conn = SMTPTestConnection(
        lambda: RecordingHandler(calls, gate),
        bareLineEndings=policy,
        enforceSync=True,
    )
    gate.drain()
    count = 0
    for segment in session.segments():
        for chunk in pieces(segment, sizes):
            conn.send(chunk)
            if drainAfter[count % len(drainAfter)]:
                gate.drain()
            count += 1
        gate.drain()  # the client waits for the replies
    run = Run(calls, conn.transport.value(), conn, gate)
    checkModel(session, run, policy)
    assert b"5.5.0" not in run.output
    assert run.stable == reference.stable
    assert run.output == reference.output


@SMALLER
@given(
    session=sessions(),
    sizes=sizeLists,
    modes=modeLists,
    drainAfter=drainLists,
    policy=policies,
)
def test_deferredHooks(
    session: SMTPSession,
    sizes: list[int],
    modes: list[str],
    drainAfter: list[bool],
    policy: str,
) -> None:
    """
    Hooks that answer with Deferreds fired later by the test (more input may
    arrive meanwhile) give the same calls and output as synchronous hooks.
    """
    wire = session.wire()
    reference = feed([wire], bareLineEndings=policy)
    run = feed(
        pieces(wire, sizes), modes=modes, drainAfter=drainAfter, bareLineEndings=policy
    )
    checkModel(session, run, policy)
    assert run.stable == reference.stable
    assert run.output == reference.output
    allAtOnce = feed([wire], modes=modes, drainAfter=drainAfter, bareLineEndings=policy)
    checkModel(session, allAtOnce, policy)
    assert allAtOnce.stable == reference.stable
    assert allAtOnce.output == reference.output


@SMALLER
@given(
    session=sessions(),
    sizes=sizeLists,
    modes=modeLists,
    drainAfter=drainLists,
    policy=policies,
)
def test_asyncHooks(
    session: SMTPSession,
    sizes: list[int],
    modes: list[str],
    drainAfter: list[bool],
    policy: str,
) -> None:
    """
    C{async def} hooks that await Deferreds fired later give the same calls
    and output as synchronous hooks.
    """
    wire = session.wire()
    reference = feed([wire], bareLineEndings=policy)
    run = feed(
        pieces(wire, sizes),
        handlerClass=AsyncRecordingHandler,
        modes=modes,
        drainAfter=drainAfter,
        bareLineEndings=policy,
    )
    checkModel(session, run, policy)
    assert run.stable == reference.stable
    assert run.output == reference.output


@SMALLER
@given(
    session=sessions(),
    sizes=sizeLists,
    chunkSize=st.integers(1, 16),
    modes=modeLists,
    policy=policies,
)
def test_smallChunkSize(
    session: SMTPSession,
    sizes: list[int],
    chunkSize: int,
    modes: list[str],
    policy: str,
) -> None:
    """
    With a tiny chunk size, BODY chunks never exceed it, and the calls (BODY
    joined) and output are the same as with the default chunk size.
    """
    wire = session.wire()
    reference = feed([wire], bareLineEndings=policy)
    for chunks in ([wire], pieces(wire, sizes)):
        run = feed(chunks, modes=modes, chunkSize=chunkSize, bareLineEndings=policy)
        checkModel(session, run, policy)
        assert all(len(chunk) <= chunkSize for chunk in run.bodyChunks)
        assert run.stable == reference.stable
        assert run.output == reference.output
