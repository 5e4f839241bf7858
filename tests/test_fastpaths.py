"""
Every fast path of the server against the general path it stands for.

The shortcuts, and what they are compared with here:

  - a plain header section read whole (L{DataReader._headerData} and
    L{Content.headerSection}), for a handler without a HEADER hook, against
    the same section parsed line by line for a handler with one;
  - EOH run at once (L{Content.endHeaders}, and inline in
    L{Content.headerSection} when the section is all there is) for a
    handler without an EOH hook, against EOH queued and called;
  - body bytes counted at once (L{Content.body}, after DATA and in BDAT
    chunks) for a handler without a BODY hook, against bytes queued for the
    pump and handed to BODY; and C{body}'s inline count against
    L{Content.count} (L{test_bodyCount});
  - a finished L{Reply} with an enhanced code taken as it is
    (L{HookRunner.callReply}), and a step run at once by an idle runner
    (L{HookRunner.run}), against results that go through the result
    machinery (L{None}, a L{Reply} without its enhanced code, a Deferred, a
    coroutine) and steps queued behind pending hooks;
  - a greeting, RSET or QUIT with no transaction open asked at once by an
    idle queue (L{Conversation.hello}, L{Conversation.reset}), against the
    ABORT step and the hook queued (L{test_helloAndReset});
  - replies written straight to the socket (L{ReplyWriter}'s direct path)
    against replies written to the transport, with a socket that takes
    everything, takes part, or fails (L{ReplyWriter.handle}, the writer
    held for a read in one call, against C{hold} and C{release}: in
    C{tests/test_writer.py}).

Hypothesis draws whole sessions (several transactions over DATA, BDAT or
both; messages with folded and odd header fields, lines that are not
headers, dot-stuffing, bare line endings, empty bodies, sizes around the
limits), how TCP splits them, and how hooks answer (at once, with a
Deferred fired at once, later by the test, or by the clock). Each session
runs once for each handler that overrides some of HEADER, EOH and BODY
(each overridden hook does nothing but count its calls; BODY keeps its
chunks): all of them must get the same hook calls, see the same
transaction at EOM (fields, raw header section, size, recipients) and the
same message bytes, and the client must get byte for byte the same output.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from esmtpkit import ESMTPHandler, PerRecipient, Reply
from esmtpkit.core.content import Content
from esmtpkit.core.conversation import Conversation
from esmtpkit.core.events import ServerEvents
from esmtpkit.core.hooks import HookRunner, defaultEnhanced
from esmtpkit.session import Params, Recipient
from esmtpkit.session import Session as ServerSession
from esmtpkit.settings import Settings
from esmtpkit.testing import LMTPTestConnection, SMTPTestConnection, dotStuff

from .test_chunking import (
    BOUNDED,
    EOM_REPLY,
    SMALLER,
    Gate,
    bodyLines,
    headerFields,
    messages,
    pieces,
)

CRLF = b"\r\n"

# -- how hooks answer -----------------------------------------------------

REPLY_HOOKS = frozenset(
    {
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
    }
)
"""The hooks whose reply the handler takes from L{ESMTPHandler}."""

FAST_MODES = ("now",)
GENERAL_MODES = ("none", "bare", "fired", "coroutine", "later", "clock")
DEFERRED_MODES = ("now", "fired", "later", "clock")


async def _coroutine(value: Any) -> Any:
    return value


class HookGate(Gate):
    """
    A L{Gate} with more ways to answer, used in turn:
      - C{"now"}: the value itself (a L{Reply} with an enhanced code takes
        L{HookRunner.callReply}'s shortcut);
      - C{"none"}: L{None} for a reply hook, which means the same default
        reply;
      - C{"bare"}: the L{Reply} without an enhanced code when the runner's
        default would restore it;
      - C{"fired"}: a Deferred fired already; C{"coroutine"}: a coroutine
        that returns at once;
      - C{"later"}: a Deferred the test fires (L{Gate.drain});
      - C{"clock"}: a Deferred the clock fires (C{clock.advance(0)}).
    """

    def __init__(self, modes: Sequence[str], clock: Clock) -> None:
        super().__init__(modes)
        self.clock = clock
        self.scheduled = 0

    def _fire(self, d: Deferred[Any], value: Any) -> None:
        self.scheduled -= 1
        d.callback(value)

    def answer(self, value: Any, hook: str = "") -> Any:
        if self.scheduled:
            self.overlapping = True
        mode = self._mode()
        if mode == "now":
            return value
        if mode == "none":
            return None if hook in REPLY_HOOKS else value
        if mode == "bare":
            if type(value) is Reply and value.enhanced == defaultEnhanced(
                hook, value.code
            ):
                return Reply(value.code, *value.lines)
            return value
        if mode == "fired":
            return succeed(value)
        if mode == "coroutine":
            return _coroutine(value)
        d: Deferred[Any] = Deferred()
        if mode == "clock":
            self.scheduled += 1
            self.clock.callLater(0, self._fire, d, value)
        else:
            self.pending.append((d, value))
        return d

    def settle(self) -> None:
        """
        Fire every pending Deferred, the test's and the clock's, and those
        their firing leads to.
        """
        for _ in range(100_000):
            self.drain()
            self.clock.advance(0)
            if not self.pending and not self.scheduled:
                return
        raise AssertionError("hooks kept pending")


# -- the handlers ---------------------------------------------------------


@dataclass
class Record:
    """
    What one handler saw.

    @ivar calls: every hook called, by name (HEADER, EOH and BODY too, when
        the handler has them).
    @ivar states: the transaction at each EOM: fields, raw header section,
        size and recipients.
    @ivar messages: the message at each EOM, C{rawHeaders} and the BODY
        chunks (for a handler with BODY).
    @ivar counts: the HEADER and EOH calls of each message, at its EOM.
    @ivar chunks: BODY chunks of the current message.
    @ivar allChunks: every BODY chunk.
    """

    calls: list[str] = field(default_factory=list)
    states: list[tuple[Any, ...]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    counts: list[tuple[int, int]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    allChunks: list[bytes] = field(default_factory=list)
    headerCalls: int = 0
    eohCalls: int = 0

    def endMessage(self) -> None:
        self.chunks = []
        self.headerCalls = self.eohCalls = 0


def eomResult(recipients: Sequence[str]) -> Any:
    """
    The EOM answer for a message to C{recipients}: L{EOM_REPLY} if all of
    them are C{ok...}, else a reply for each (C{bad...}: 550, C{later...}:
    451).
    """
    replies: list[Any] = []
    for address in recipients:
        if address.startswith("bad"):
            replies.append(Reply(550, "No such user here", enhanced="5.1.1"))
        elif address.startswith("later"):
            replies.append((451, "4.2.1 Mailbox busy"))
        else:
            replies.append(EOM_REPLY)
    if all(reply is EOM_REPLY for reply in replies):
        return EOM_REPLY
    return PerRecipient(replies)


class Probe(ESMTPHandler):
    """
    Records its hook calls and the transaction at EOM; every reply hook
    gives L{ESMTPHandler}'s reply, through the L{HookGate}. Without the
    mixins below it has no content hook.
    """

    def __init__(self, record: Record, gate: HookGate) -> None:
        super().__init__()
        self.record = record
        self.gate = gate

    def _answer(self, hook: str, value: Any) -> Any:
        self.record.calls.append(hook)
        return self.gate.answer(value, hook)

    def CONNECT(self) -> Any:
        return self._answer("CONNECT", super().CONNECT())

    def HELO(self, domain: str) -> Any:
        return self._answer("HELO", super().HELO(domain))

    def EHLO(self, domain: str) -> Any:
        return self._answer("EHLO", super().EHLO(domain))

    def MAIL(self, sender: str, params: Any) -> Any:
        return self._answer("MAIL", super().MAIL(sender, params))

    def RCPT(self, recipient: str, params: Any) -> Any:
        return self._answer("RCPT", super().RCPT(recipient, params))

    def DATA(self) -> Any:
        return self._answer("DATA", super().DATA())

    def RSET(self) -> Any:
        return self._answer("RSET", super().RSET())

    def NOOP(self) -> Any:
        return self._answer("NOOP", super().NOOP())

    def VRFY(self, address: str) -> Any:
        return self._answer("VRFY", super().VRFY(address))

    def EXPN(self, address: str) -> Any:
        return self._answer("EXPN", super().EXPN(address))

    def HELP(self, topic: str | None) -> Any:
        return self._answer("HELP", super().HELP(topic))

    def QUIT(self) -> Any:
        return self._answer("QUIT", super().QUIT())

    def UNKNOWN(self, line: str) -> Any:
        return self._answer("UNKNOWN", super().UNKNOWN(line))

    def EOM(self) -> Any:
        transaction = self.session.transaction
        assert transaction is not None
        record = self.record
        recipients = [r.address for r in transaction.recipients]
        record.states.append(
            (
                tuple(transaction.headers),
                transaction.rawHeaders,
                transaction.size,
                tuple(
                    (r.address, tuple(sorted(r.params.items())))
                    for r in transaction.recipients
                ),
            )
        )
        if isinstance(self, WithBody):
            record.messages.append(transaction.rawHeaders + b"".join(record.chunks))
        record.counts.append((record.headerCalls, record.eohCalls))
        record.endMessage()
        return self._answer("EOM", eomResult(recipients))

    def ABORT(self) -> Any:
        self.record.endMessage()
        return self._answer("ABORT", None)

    def DISCONNECT(self) -> Any:
        return self._answer("DISCONNECT", None)


class WithHeader:
    """
    A HEADER hook that does nothing but count its calls.
    """

    record: Record
    gate: HookGate

    def HEADER(self, name: str, value: str) -> Any:
        self.record.calls.append("HEADER")
        self.record.headerCalls += 1
        return self.gate.answer(None, "HEADER")


class WithEOH:
    """
    An EOH hook that does nothing but count its calls.
    """

    record: Record
    gate: HookGate

    def EOH(self) -> Any:
        self.record.calls.append("EOH")
        self.record.eohCalls += 1
        return self.gate.answer(None, "EOH")


class WithBody:
    """
    A BODY hook that keeps the chunks.
    """

    record: Record
    gate: HookGate

    def BODY(self, chunk: bytes) -> Any:
        self.record.calls.append("BODY")
        self.record.chunks.append(chunk)
        self.record.allChunks.append(chunk)
        return self.gate.answer(None, "BODY")


MIXINS = {"HEADER": WithHeader, "EOH": WithEOH, "BODY": WithBody}


def handlerClass(hooks: frozenset[str]) -> type[Probe]:
    """
    The L{Probe} with the content hooks C{hooks} (the others are
    L{ESMTPHandler}'s, which the server skips).
    """
    bases = tuple(MIXINS[name] for name in ("HEADER", "EOH", "BODY") if name in hooks)
    name = "Probe" + "".join(sorted(hooks)).title()
    return type(name, (*bases, Probe), {})


COMBINATIONS = [
    frozenset(chosen)
    for size in range(4)
    for chosen in itertools.combinations(("HEADER", "EOH", "BODY"), size)
]
HANDLERS = {hooks: handlerClass(hooks) for hooks in COMBINATIONS}
ALL_HOOKS = frozenset(MIXINS)


# -- sessions ---------------------------------------------------------------

# Header lines a plain section rarely has: no space after the colon, space
# before it, empty values, 8-bit text, continuation lines first, lines that
# are not fields, dots at the start (dot-stuffed on the wire), bare line
# endings.
ODD_LINES = [
    b"Name:value",
    b"Name :value",
    b"Name:",
    b"Name: ",
    b"X-Empty:\t",
    b"X-8bit: \xc3\xa9t\xc3\xa9 \xff",
    b" continued",
    b"\tcontinued",
    b"not a header",
    b":no name",
    b"From someone",
    b".Dotted: x",
    b"..",
    b".",
    b"Subject: a\rb",
    b"Subject: a\nb",
    b"X: \x00",
]


@st.composite
def oddMessages(draw: Any) -> bytes:
    """
    A header section of plain fields and odd lines, maybe ended by an
    empty line, then a body that may be empty.
    """
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append(draw(headerFields())[0])
        else:
            lines.append(draw(st.sampled_from(ODD_LINES)))
    if draw(st.booleans()):
        lines.append(b"X-Long: " + b"v" * draw(st.integers(50, 600)))
    head = b"".join(line + CRLF for line in lines)
    ending: bytes = draw(st.sampled_from([b"\r\n", b"\r\n", b"", b"\n"]))
    body: list[bytes] = draw(st.lists(bodyLines, max_size=4))
    tail = CRLF.join(body) + (CRLF if body and draw(st.booleans()) else b"")
    return head + ending + tail


anyMessage = st.one_of(messages().map(lambda m: m.data), oddMessages())

RECIPIENTS = [
    "ok1@example.net",
    "ok2@example.net",
    "bad@example.net",
    "later@example.org",
    "postmaster",
]
IDLE_COMMANDS = [b"NOOP", b"RSET", b"VRFY someone", b"HELP", b"XYZZY", b"EXPN x"]


@dataclass(frozen=True)
class Session:
    """
    A client's side of a session: its reads as a correct client would send
    them (C{steps}; after a step with C{wait} set, a correct client waits
    for the replies).
    """

    steps: tuple[tuple[bytes, bool], ...]
    contents: tuple[bytes, ...] = ()
    """Each message as the server counts it (its size)."""

    @property
    def wire(self) -> bytes:
        return b"".join(data for data, _ in self.steps)

    def client(self) -> list[bytes]:
        """
        The reads of a pipelining client: up to and including each command
        it must wait after (EHLO, DATA); a message and the next
        transaction's commands go together.
        """
        out: list[bytes] = []
        current = b""
        for data, wait in self.steps:
            current += data
            if wait:
                out.append(current)
                current = b""
        return [*out, current] if current else out

    def each(self) -> list[bytes]:
        """
        One read per step: each message starts a read.
        """
        return [data for data, _ in self.steps if data]


def bdatChunks(message: bytes, cuts: list[int], empty: bool) -> bytes:
    """
    C{message} as BDAT chunks cut at C{cuts}, the last with LAST (or an
    empty C{BDAT 0 LAST} after them).
    """
    points = sorted({0, len(message), *(c % (len(message) + 1) for c in cuts)})
    parts = [message[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]
    if empty and parts != [b""]:
        parts.append(b"")
    out = []
    for index, part in enumerate(parts):
        last = b" LAST" if index == len(parts) - 1 else b""
        out.append(b"BDAT %d%s\r\n" % (len(part), last) + part)
    return b"".join(out)


@st.composite
def sessions(draw: Any, via: Sequence[str] = ("data",), lmtp: bool = False) -> Session:
    """
    A greeting, one to three transactions (each delivered over DATA or
    BDAT, as C{via} allows, or reset), commands between them, QUIT.
    """
    steps: list[tuple[bytes, bool]] = []
    contents: list[bytes] = []
    steps.append(((b"LHLO" if lmtp else b"EHLO") + b" client.example\r\n", True))
    for _ in range(draw(st.integers(1, 3))):
        envelope = b"".join(
            command + CRLF
            for command in draw(st.lists(st.sampled_from(IDLE_COMMANDS), max_size=2))
        )
        envelope += b"MAIL FROM:<alice@example.org>\r\n"
        recipients = draw(
            st.lists(
                st.sampled_from(RECIPIENTS),
                min_size=2 if lmtp else 1,
                max_size=3,
            )
        )
        envelope += b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in recipients)
        kind = draw(st.sampled_from([*via, *via, *via, "rset"]))
        if kind == "rset":
            steps.append((envelope + b"RSET\r\n", False))
            continue
        message = draw(anyMessage)
        if kind == "data":
            steps.append((envelope + b"DATA\r\n", True))
            steps.append((dotStuff(message), False))
            # Dot-stuffing ends the message with CRLF.
            ending = b"" if not message or message.endswith(CRLF) else CRLF
            contents.append(message + ending)
        else:
            cuts = draw(st.lists(st.integers(0, 10_000), max_size=4))
            steps.append((envelope, False))
            steps.append((bdatChunks(message, cuts, draw(st.booleans())), False))
            contents.append(message)
    steps.append((b"QUIT\r\n", False))
    return Session(tuple(steps), tuple(contents))


@dataclass(frozen=True)
class Split:
    """
    How TCP cut the session into reads.
    """

    kind: str
    sizes: tuple[int, ...] = (1,)
    cuts: tuple[int, ...] = ()

    def reads(self, session: Session) -> list[bytes]:
        wire = session.wire
        if self.kind == "whole":
            return [wire]
        if self.kind == "bytes":
            if len(wire) > 4000:  # keep the run short
                return pieces(wire, [7, 1, 13])
            return pieces(wire, [1])
        if self.kind == "sizes":
            return pieces(wire, self.sizes)
        if self.kind == "cuts":
            points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in self.cuts)})
            return [wire[a:b] for a, b in zip(points, points[1:], strict=False)]
        if self.kind == "client":
            return session.client()
        return session.each()


splits = st.one_of(
    # A correct client's reads, and one per step, start a read with the
    # message: the header section may then be taken whole.
    st.sampled_from([Split("whole"), Split("bytes"), Split("client"), Split("each")]),
    st.sampled_from([Split("client"), Split("each")]),
    st.builds(
        Split,
        st.just("sizes"),
        st.lists(st.integers(1, 200), min_size=1, max_size=8).map(tuple),
    ),
    st.builds(
        Split,
        st.just("cuts"),
        st.just((1,)),
        st.lists(st.integers(0, 100_000), max_size=12).map(tuple),
    ),
)


@dataclass(frozen=True)
class Limits:
    """
    The server settings a run draws: bare line endings, the size limits,
    the BODY chunk size.
    """

    bareLineEndings: str = "reject"
    maxMessageSize: int = 32 * 1024 * 1024
    maxHeaderSize: int = 256 * 1024
    chunkSize: int = 65536

    @property
    def roomy(self) -> bool:
        """
        Whether no message of the sessions drawn passes a size limit.
        """
        return self.maxMessageSize in (0, 32 * 1024 * 1024) and (
            self.maxHeaderSize == 256 * 1024
        )

    def overrides(self) -> dict[str, Any]:
        return {
            "bareLineEndings": self.bareLineEndings,
            "maxMessageSize": self.maxMessageSize,
            "maxHeaderSize": self.maxHeaderSize,
            "chunkSize": self.chunkSize,
            # The client does not wait for replies; error replies must not
            # slow the session down (that would need the clock to run).
            "enforceSync": False,
            "softErrorLimit": 0,
            "hardErrorLimit": 0,
        }


@st.composite
def cases(draw: Any, sessions: st.SearchStrategy[Session]) -> tuple[Session, Limits]:
    """
    A session and the settings to run it with: the default size limits, or
    limits some of its messages pass, maybe by one byte (the whole message,
    or its header section).
    """
    session = draw(sessions)
    sizes = [len(content) for content in session.contents]
    heads = [
        content.find(b"\r\n\r\n") + 4
        for content in session.contents
        if b"\r\n\r\n" in content
    ]

    def near(values: list[int], low: int) -> st.SearchStrategy[int]:
        if not values:
            return st.integers(low, 300)
        return st.sampled_from(values).flatmap(
            lambda v: st.integers(max(low, v - 1), max(low, v + 1))
        )

    maxMessageSize = draw(
        st.one_of(
            st.just(Limits.maxMessageSize),
            st.just(0),
            st.integers(10, 300),
            st.integers(300, 3000),
            near(sizes, 1),
        )
    )
    maxHeaderSize = draw(
        st.one_of(
            st.just(Limits.maxHeaderSize),
            st.just(Limits.maxHeaderSize),
            st.integers(8, 120),
            st.integers(120, 700),
            near(heads, 1),
        )
    )
    limits = Limits(
        draw(st.sampled_from(["reject", "normalize"])),
        maxMessageSize,
        maxHeaderSize,
        draw(st.one_of(st.just(Limits.chunkSize), st.integers(1, 64))),
    )
    return session, limits


modeLists = st.lists(st.sampled_from(DEFERRED_MODES), min_size=1, max_size=6)
generalModeLists = st.lists(st.sampled_from(GENERAL_MODES), min_size=1, max_size=6)
hookModes = st.one_of(st.just(["now"]), modeLists)
drainLists = st.lists(st.booleans(), min_size=1, max_size=6)


# -- running a session --------------------------------------------------------


@dataclass
class Run:
    """
    One session run: what the handler saw and what the client got.
    """

    record: Record
    output: bytes
    conn: SMTPTestConnection
    gate: HookGate


def run(
    session: Session,
    reads: Sequence[bytes],
    hooks: frozenset[str],
    limits: Limits,
    modes: Sequence[str] = ("now",),
    drainAfter: Sequence[bool] = (True,),
    lmtp: bool = False,
) -> Run:
    """
    Feed C{reads} to a fresh connection whose handler has the content hooks
    C{hooks}; after each read, fire the hooks' pending Deferreds if
    C{drainAfter} (used in turn) says so, then end the reactor turn; at the
    end, fire everything still pending.
    """
    record = Record()
    clock = Clock()
    gate = HookGate(modes, clock)
    cls = HANDLERS[hooks]
    connection = LMTPTestConnection if lmtp else SMTPTestConnection
    conn = connection(
        lambda: cls(record, gate),
        clock=clock,
        **limits.overrides(),
    )
    gate.settle()  # a well-behaved client waits for the greeting
    for index, data in enumerate(reads):
        conn.send(data)
        if drainAfter[index % len(drainAfter)]:
            gate.drain()
        clock.advance(0)
    gate.settle()
    assert conn.closed, "the session did not end"
    assert not gate.overlapping, "a hook was called while another was pending"
    return Run(record, conn.output, conn, gate)


CONTENT = ("HEADER", "EOH", "BODY")


def joined(calls: list[str]) -> list[str]:
    """
    C{calls} with each run of BODY calls as one (how many chunks a message
    takes depends on the reads), and without the content calls right before
    an ABORT (how much of a refused message reached the handler before its
    refusal depends on when hooks answered).
    """
    out: list[str] = []
    for call in calls:
        if call == "BODY" and out and out[-1] == "BODY":
            continue
        if call == "ABORT":
            while out and out[-1] in CONTENT:
                out.pop()
        out.append(call)
    return out


def compare(runs: dict[frozenset[str], Run], limits: Limits) -> None:
    """
    Check that the runs of one session with different content hooks agree:
    the same output, the same calls (content hooks aside), the same
    transaction at each EOM, the same message bytes for the handlers with
    BODY, and content hook calls that fit what EOM saw.
    """
    reference = runs[ALL_HOOKS]
    expectedCalls = [c for c in reference.record.calls if c not in CONTENT]
    for hooks, result in runs.items():
        record = result.record
        label = f"hooks {sorted(hooks)}"
        assert result.output == reference.output, label
        assert [c for c in record.calls if c not in CONTENT] == expectedCalls, label
        assert record.states == reference.record.states, label
        for name in CONTENT:
            if name not in hooks:
                assert name not in record.calls, f"{label}: {name} called"
        for (headers, _, _, _), (headerCalls, eohCalls) in zip(
            record.states, record.counts, strict=True
        ):
            if "HEADER" in hooks:
                assert headerCalls == len(headers), label
            if "EOH" in hooks:
                assert eohCalls == 1, label
        if "BODY" in hooks:
            assert record.messages == reference.record.messages, label
            sizes = [state[2] for state in record.states]
            assert [len(m) for m in record.messages] == sizes, label
            chunks = record.allChunks
            assert all(0 < len(c) <= limits.chunkSize for c in chunks), label


def runAll(
    session: Session,
    reads: Sequence[bytes],
    limits: Limits,
    modes: Sequence[str],
    drainAfter: Sequence[bool],
    lmtp: bool = False,
) -> dict[frozenset[str], Run]:
    """
    The session, split into C{reads}, with every combination of content
    hooks; the runs agree with each other and, within roomy limits, with
    the handler with every hook, answering at once, fed the session whole.
    (A message that passes a size limit and holds a bare line ending is
    refused for the one found first, which depends on the reads.)
    """
    runs = {
        hooks: run(session, reads, hooks, limits, modes, drainAfter, lmtp=lmtp)
        for hooks in COMBINATIONS
    }
    compare(runs, limits)
    if limits.roomy:
        whole = run(session, [session.wire], ALL_HOOKS, limits, lmtp=lmtp)
        assert runs[ALL_HOOKS].output == whole.output
        assert runs[ALL_HOOKS].record.states == whole.record.states
        assert runs[ALL_HOOKS].record.messages == whole.record.messages
    return runs


# -- the properties: content -------------------------------------------------

PLAIN = Session(
    (
        (b"EHLO client.example\r\n", True),
        (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<ok1@example.net>\r\n", False),
        (b"DATA\r\n", True),
        (dotStuff(b"A: 1\r\nB: 2\r\n c\r\n\r\nbody\r\n"), False),
        (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<ok1@example.net>\r\n", False),
        (b"DATA\r\n", True),
        (dotStuff(b"A: 1\r\n\r\n"), False),
        (b"QUIT\r\n", False),
    )
)


@BOUNDED
@given(
    case=cases(sessions(via=("data",))),
    split=splits,
    modes=hookModes,
    drainAfter=drainLists,
)
@example(
    case=(PLAIN, Limits()),
    split=Split("each"),
    modes=["now"],
    drainAfter=[True],
)
@example(
    case=(PLAIN, Limits()),
    split=Split("client"),
    modes=["later", "clock"],
    drainAfter=[False],
)
def test_data(
    case: tuple[Session, Limits],
    split: Split,
    modes: list[str],
    drainAfter: list[bool],
) -> None:
    """
    Messages over DATA: every combination of HEADER, EOH and BODY hooks
    sees the same transactions and messages, and the client the same
    replies, however the reads cut the session and however hooks answer.
    """
    session, limits = case
    runAll(session, split.reads(session), limits, modes, drainAfter)


@BOUNDED
@given(
    case=cases(sessions(via=("bdat",))),
    split=splits,
    modes=hookModes,
    drainAfter=drainLists,
)
def test_bdat(
    case: tuple[Session, Limits],
    split: Split,
    modes: list[str],
    drainAfter: list[bool],
) -> None:
    """
    The same for messages in BDAT chunks of random sizes, the last chunk
    with LAST, maybe empty.
    """
    session, limits = case
    runAll(session, split.reads(session), limits, modes, drainAfter)


@SMALLER
@given(
    case=cases(sessions(via=("data", "bdat"), lmtp=True)),
    split=splits,
    modes=hookModes,
    drainAfter=drainLists,
)
def test_lmtp(
    case: tuple[Session, Limits],
    split: Split,
    modes: list[str],
    drainAfter: list[bool],
) -> None:
    """
    The same over LMTP, two or three recipients per message, each answered
    on its own (accepted, refused, deferred).
    """
    session, limits = case
    runs = runAll(session, split.reads(session), limits, modes, drainAfter, lmtp=True)
    assert runs[ALL_HOOKS].conn.session.lmtp


# -- the property: reply hooks and the hook queue -----------------------------


@SMALLER
@given(
    case=cases(sessions(via=("data", "bdat"))),
    split=splits,
    modes=generalModeLists,
    drainAfter=drainLists,
    hooks=st.sampled_from([frozenset(), ALL_HOOKS]),
)
def test_replyHooks(
    case: tuple[Session, Limits],
    split: Split,
    modes: list[str],
    drainAfter: list[bool],
    hooks: frozenset[str],
) -> None:
    """
    Hooks that return a finished L{Reply} with its enhanced code, at once,
    on an idle queue (the shortcuts of L{HookRunner.callReply} and
    L{HookRunner.run}) give the same calls, transactions and output as
    hooks whose answers go through the general machinery: L{None} for the
    default reply, the reply without the enhanced code the runner adds,
    Deferreds fired at once, later or by the clock (so that commands queue
    behind pending hooks), coroutines.
    """
    session, limits = case
    reads = split.reads(session)
    fast = run(session, reads, hooks, limits, FAST_MODES)
    general = run(session, reads, hooks, limits, modes, drainAfter)
    assert general.output == fast.output
    assert joined(general.record.calls) == joined(fast.record.calls)
    assert general.record.states == fast.record.states
    assert general.record.messages == fast.record.messages


# The protocol only calls HookRunner.run on an idle runner (input is held
# while a hook is pending, and the queue runs dry after each read), so the
# property above cannot tell whether run() would queue a step when it must.
# This one drives a runner directly: random steps, each queueing more steps
# and calling at most one hook, hooks answering at once or by a Deferred the
# test fires, run() called at any moment.


@dataclass(frozen=True)
class StepSpec:
    """
    A step: the steps it queues with C{later} and C{now}, and asks to run
    with C{run} (from inside a step: queued first in line), then the hook
    it calls, if any: C{("reply", key)} (L{HookRunner.callReply}) or
    C{("invoke", key)}.
    """

    later: tuple[StepSpec, ...] = ()
    now: tuple[StepSpec, ...] = ()
    run: tuple[StepSpec, ...] = ()
    hook: tuple[str, int] | None = None


hookCalls = st.one_of(
    st.none(), st.tuples(st.sampled_from(["reply", "invoke"]), st.integers(0, 5))
)
stepSpecs = st.recursive(
    st.builds(StepSpec, hook=hookCalls),
    lambda inner: st.builds(
        StepSpec,
        st.lists(inner, max_size=2).map(tuple),
        st.lists(inner, max_size=2).map(tuple),
        st.lists(inner, max_size=1).map(tuple),
        hookCalls,
    ),
    max_leaves=6,
)
runnerOps = st.lists(
    st.one_of(
        st.tuples(st.just("run"), stepSpecs),
        st.tuples(st.just("run"), stepSpecs),
        st.tuples(st.just("later"), stepSpecs),
        st.tuples(st.just("fire")),
        st.tuples(st.just("drive")),
    ),
    max_size=25,
)
# How the hook with each key answers: at once, or by a Deferred the test
# fires; and, for reply hooks answering at once, in which form.
hookTimings = st.lists(st.sampled_from(["now", "later"]), min_size=6, max_size=6)
replyForms = st.lists(
    st.sampled_from(["bare", "fired", "coroutine", "reply"]), min_size=6, max_size=6
)


class QueueingRunner(HookRunner):
    """
    A runner whose L{run} always takes the general path: the step first in
    line, then the queue driven.
    """

    __slots__ = ()

    def run(self, step: Any, *args: Any) -> None:
        self.now(lambda: step(*args))
        self.drive()


class RunnerProbe:
    """
    The handler, flow and log of one runner: every step run, hook called,
    result passed on and flow notification, in order.
    """

    def __init__(self, timings: Sequence[str], forms: Sequence[str]) -> None:
        self.timings = timings
        self.forms = forms
        self.log: list[Any] = []
        self.pending: list[tuple[Deferred[Any], Any]] = []

    def hookPending(self) -> None:
        self.log.append("hookPending")

    def hooksDone(self) -> None:
        self.log.append("hooksDone")

    def _answer(self, key: int, value: Any) -> Any:
        if self.timings[key] == "later":
            d: Deferred[Any] = Deferred()
            self.pending.append((d, value))
            return d
        return value

    def REPLY(self, key: int) -> Any:
        self.log.append(("REPLY", key))
        reply = Reply(250, f"ok {key}", enhanced="2.0.0")
        if self.timings[key] == "later":
            return self._answer(key, reply)
        form = self.forms[key]
        if form == "bare":
            return Reply(250, f"ok {key}")
        if form == "fired":
            return succeed(reply)
        if form == "coroutine":
            return _coroutine(reply)
        return reply

    def INVOKE(self, key: int) -> Any:
        self.log.append(("INVOKE", key))
        return self._answer(key, key)


def runProgram(
    runnerClass: type[HookRunner],
    ops: Sequence[tuple[Any, ...]],
    timings: Sequence[str],
    forms: Sequence[str],
) -> list[Any]:
    probe = RunnerProbe(timings, forms)
    conversation: Any = type(
        "Stub",
        (),
        {
            "events": ServerEvents(),
            "settings": Settings(hostname="mx.example.test", hookTimeout=0),
            "clock": Clock(),
            "session": None,
        },
    )()
    runner = runnerClass(probe, conversation, probe)
    counter = itertools.count()

    def make(spec: StepSpec) -> Any:
        def step() -> None:
            probe.log.append(("step", number))
            for inner in spec.later:
                runner.later(make(inner))
            for inner in spec.now:
                runner.now(make(inner))
            for inner in spec.run:
                runner.run(make(inner))
            if spec.hook is not None:
                kind, key = spec.hook
                if kind == "reply":
                    runner.callReply(
                        "REPLY",
                        (key,),
                        lambda reply: probe.log.append(("reply", reply.toBytes())),
                    )
                else:
                    runner.invoke(
                        "INVOKE",
                        (key,),
                        lambda value: probe.log.append(("done", value)),
                    )

        number = next(counter)
        return step

    for op in ops:
        if op[0] == "run":
            runner.run(make(op[1]))
        elif op[0] == "later":
            runner.later(make(op[1]))
        elif op[0] == "drive":
            runner.drive()
        elif probe.pending:
            d, value = probe.pending.pop(0)
            d.callback(value)
    while probe.pending:
        d, value = probe.pending.pop(0)
        d.callback(value)
    runner.drive()
    probe.log.append(("idle", runner.idle))
    return probe.log


@BOUNDED
@given(ops=runnerOps, timings=hookTimings, forms=replyForms)
def test_hookRunner(
    ops: list[tuple[Any, ...]], timings: list[str], forms: list[str]
) -> None:
    """
    L{HookRunner.run} running a step at once on an idle runner, and
    L{HookRunner.callReply} taking a finished L{Reply} with its enhanced code
    as it is, do what the general paths do: the same steps, hook calls,
    results and flow notifications, in the same order, as a runner whose
    run() always queues the step first in line and drives the queue, whose
    reply hooks answer the same reply without its enhanced code, by a fired
    Deferred or by a coroutine.
    """
    fast = runProgram(HookRunner, ops, timings, ["reply"] * len(forms))
    general = runProgram(QueueingRunner, ops, timings, forms)
    assert fast == general


# -- the property: greetings and resets asked at once ---------------------------


class QueueingConversation(Conversation):
    """
    A conversation whose L{Conversation.hello} and L{Conversation.reset}
    always take the general path: the ABORT step, then the hook, queued.
    """

    __slots__ = ()

    def hello(self, hook: str, domain: str, extended: bool, then: Any) -> None:
        session, hooks = self.session, self.hooks

        def greeted(reply: Reply) -> None:
            if reply.code // 100 == 2:
                session.heloName = domain
                session.esmtp = extended
            then(reply)

        hooks.now(self.abortStep, lambda: hooks.callReply(hook, (domain,), greeted))

    def reset(self, hook: str, then: Any) -> None:
        hooks = self.hooks
        hooks.now(self.abortStep, lambda: hooks.callReply(hook, (), then))


class _Calls(ESMTPHandler):
    """
    A handler that records every hook it is asked, with the transaction
    open at the time, and answers as L{ESMTPHandler} does.
    """

    calls: list[Any]

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name.isupper() and callable(value):
            calls = super().__getattribute__("calls")
            session = super().__getattribute__("session")

            def recorded(*args: Any) -> Any:
                transaction = session.transaction
                calls.append((name, args, transaction and transaction.sender))
                return value(*args)

            return recorded
        return value


sessionCommands = st.lists(
    st.sampled_from(
        [
            "EHLO client.example",
            "HELO client.example",
            "RSET",
            "NOOP",
            "MAIL FROM:<a@example.org>",
            "MAIL FROM:<b@example.org>",
            "RCPT TO:<c@example.org>",
            "RSET extra",
            "EHLO",
        ]
    ),
    max_size=12,
)


@BOUNDED
@given(commands=sessionCommands, quit=st.booleans())
def test_helloAndReset(commands: list[str], quit: bool) -> None:
    """
    A greeting (HELO, EHLO) or RSET/QUIT with no transaction open, on an
    idle queue, is asked at once (L{Conversation.hello},
    L{Conversation.reset}); it does what the general path does, the ABORT
    step and then the hook queued: the same hook calls with the same
    transaction open, the same replies, the same session state.
    """
    results = []
    for fast in (True, False):
        handlers: list[_Calls] = []

        def build(handlers: list[_Calls] = handlers) -> _Calls:
            handler = _Calls()
            handler.calls = []
            handlers.append(handler)
            return handler

        # No error budget: its delays would hold replies back.
        conn = SMTPTestConnection(build, softErrorLimit=0, hardErrorLimit=0)
        if not fast:
            conn.protocol.conversation.__class__ = QueueingConversation
        replies = [conn.command(command).toBytes() for command in commands]
        if quit:
            replies.append(conn.command("QUIT").toBytes())
        conn.protocol.connectionLost()
        session = conn.protocol.session
        results.append((replies, handlers[0].calls, session.heloName, session.esmtp))
    assert results[0] == results[1]


# -- the property: body bytes counted inline ------------------------------------


class _Flow:
    """
    A L{HookFlow} that only counts what it is told.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def hookPending(self) -> None:
        self.calls.append("pending")

    def hooksDone(self) -> None:
        self.calls.append("done")


class _Aborts(ESMTPHandler):
    """
    A handler without content hooks that records its ABORTs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.aborts = 0

    def ABORT(self) -> None:
        self.aborts += 1


def _content(limit: int) -> tuple[Content, _Aborts]:
    session = ServerSession(hostname="mx.example.test")
    settings = Settings(hostname="mx.example.test", maxMessageSize=limit)
    conversation = Conversation(session, settings, Clock(), ServerEvents())
    handlers: list[_Aborts] = []

    def build() -> _Aborts:
        handlers.append(_Aborts())
        return handlers[0]

    assert conversation.start(build, _Flow())
    session.transaction = session.newTransaction("a@example.org", Params())
    session.transaction.recipients.append(Recipient("b@example.org", Params()))
    return Content(conversation), handlers[0]


@BOUNDED
@given(
    limit=st.sampled_from([0, 1, 5, 16, 40]),
    sizes=st.lists(st.integers(0, 20), max_size=12),
)
def test_bodyCount(limit: int, sizes: list[int]) -> None:
    """
    L{Content.body} counts its bytes inline, as L{Content.count} does: for a
    handler without a BODY hook, body bytes given to C{body} leave the same
    size, the same refusal (at the same byte, against the size limit or
    none) and the same ABORTs as the same sizes given to C{count}, after
    every call.
    """
    fast, fastHandler = _content(limit)
    general, generalHandler = _content(limit)
    for size in sizes:
        fast.body(b"x" * size)
        if size:  # count() is what body() does for bytes, and only for bytes
            general.count(size)
        fast._conversation.hooks.drive()
        general._conversation.hooks.drive()
        assert (fast.size, fast.failure) == (general.size, general.failure)
        assert fastHandler.aborts == generalHandler.aborts
    assert fast.size == sum(sizes)
    if limit and sum(sizes) > limit:
        assert fast.failure is not None


# -- the property: the direct socket path --------------------------------------

FULL, SHORT, EAGAIN, RESET, PIPE, ZERO = "full", "short", "eagain", "reset", "pipe", "0"


class ScriptedSocket:
    """
    A socket whose sends follow a script, one entry per call, then take
    everything: C{(FULL,)}, C{(SHORT, n)} (at most C{n} bytes), C{(ZERO,)}
    (nothing taken), or an error: C{EAGAIN} (C{BlockingIOError}), C{RESET},
    C{PIPE}.

    @ivar transport: set by the test: the socket must never be offered
        anything once the transport has got something.
    """

    def __init__(self, script: Sequence[tuple[Any, ...]]) -> None:
        self.script = list(script)
        self.sends = 0
        self.transport: Any = None

    def send(self, data: bytes, /) -> int:
        if self.transport is not None:
            assert self.transport.value() == b"", "socket used after the transport"
        step = self.script[self.sends] if self.sends < len(self.script) else (FULL,)
        self.sends += 1
        kind = step[0]
        if kind == EAGAIN:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if kind == RESET:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        if kind == PIPE:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        if kind == ZERO:
            return 0
        if kind == SHORT:
            return min(int(step[1]), len(data))
        return len(data)


socketSteps = st.one_of(
    st.just((FULL,)),
    st.just((FULL,)),
    st.just((FULL,)),
    st.tuples(st.just(SHORT), st.integers(0, 40)),
    st.sampled_from([(EAGAIN,), (RESET,), (PIPE,), (ZERO,)]),
)
scripts: st.SearchStrategy[list[tuple[Any, ...]]] = st.one_of(
    st.just([]), st.lists(socketSteps, max_size=12)
)


@BOUNDED
@given(
    case=cases(sessions(via=("data", "bdat"))),
    split=splits,
    modes=hookModes,
    drainAfter=drainLists,
    turnEnds=drainLists,
    script=scripts,
    lmtp=st.booleans(),
    hooks=st.sampled_from(COMBINATIONS),
)
def test_directSocket(
    case: tuple[Session, Limits],
    split: Split,
    modes: list[str],
    drainAfter: list[bool],
    turnEnds: list[bool],
    script: list[tuple[Any, ...]],
    lmtp: bool,
    hooks: frozenset[str],
) -> None:
    """
    Through the real protocol, a connection whose replies go straight to
    its socket at the end of each reactor turn gives the client exactly the
    bytes a connection that writes to its transport gives, in the same
    order, whether the socket takes everything, part of the bytes, nothing,
    or fails; at the end of every turn the two agree so far.
    """
    session, limits = case
    if lmtp:
        hello = session.steps[0][0].replace(b"EHLO", b"LHLO", 1)
        session = Session(((hello, True), *session.steps[1:]))
    reads = split.reads(session)
    sock = ScriptedSocket(script)
    cls = HANDLERS[hooks]
    connection = LMTPTestConnection if lmtp else SMTPTestConnection
    sides: list[tuple[SMTPTestConnection, HookGate, Record]] = []
    for directSocket in (sock, None):
        record = Record()
        clock = Clock()
        gate = HookGate(modes, clock)
        conn = connection(
            partial(cls, record, gate),
            clock=clock,
            directSocket=directSocket,
            **limits.overrides(),
        )
        gate.settle()
        sides.append((conn, gate, record))
    (direct, directGate, directRecord), (plain, plainGate, plainRecord) = sides
    assert not plain.protocol.writer.direct
    # The greeting was the first send: did the socket take all of it?
    first = script[0] if script else (FULL,)
    tookAll = first[0] == FULL or (first[0] == SHORT and first[1] >= len(plain.output))
    assert direct.protocol.writer.direct == tookAll
    sock.transport = direct.transport
    assert direct.output == plain.output
    for index, data in enumerate(reads):
        turnEnd = turnEnds[index % len(turnEnds)]
        for conn, gate, _ in sides:
            conn.send(data)
            if drainAfter[index % len(drainAfter)]:
                gate.drain()
            if turnEnd:
                conn.clock.advance(0)
        if turnEnd:
            assert direct.output == plain.output
        else:
            assert plain.output.startswith(direct.output)
    directGate.settle()
    plainGate.settle()
    assert direct.output == plain.output
    assert joined(directRecord.calls) == joined(plainRecord.calls)
    assert directRecord.states == plainRecord.states
    assert direct.closed and plain.closed
