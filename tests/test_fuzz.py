"""
Hostile input for the protocol (issue 4, "Robustness"): a hypothesis state
machine drives one in-memory connection at a time (L{SMTPTestConnection},
StringTransport and a fake Clock) with random and hostile byte streams
(garbage, NUL bytes, invalid UTF-8, lines of up to 1 MB, random command words
and arguments, valid commands in random order, DATA and BDAT with random
content and sizes), split into reads at random points, with random clock
advances, client disconnects and reconnects. The handler's hooks answer at
random: synchronously, with fired or pending Deferreds, as coroutines, with
refusals, or by raising.

After every read and every step the machine checks:
  - nothing escapes C{dataReceived}, and nothing is logged as a failure but
    the exceptions the hooks raised on purpose (also no "Unhandled error in
    Deferred");
  - the output is well-formed SMTP replies, never more replies than command
    lines and message ends (plus one closing reply), and replies that carry
    a hook's tag come out in the order the hooks were called;
  - every hook call obeys the transaction rules (see L{Conversation});
  - the protocol's buffers stay within the line, header and chunk limits
    plus one read, and no BODY chunk is larger than C{chunkSize}.

Each of the four combinations of C{enforceSync} and the bare-LF policy gets
its own test case; the other settings are drawn at random.
"""

from __future__ import annotations

import gc
import random
import re
from collections.abc import Callable
from typing import Any, cast

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from esmtpkit import ESMTPHandler, Reply, ReplyError, Settings
from esmtpkit.core.headers import BODY, END, HeaderParser
from esmtpkit.handler import defaultReply
from esmtpkit.smtp.connection import HELD_INPUT
from esmtpkit.testing import LogCollector, SMTPTestConnection, parseReplies

HOSTNAME = "mx.example.test"

REPLY_HOOKS = frozenset(
    {
        "CONNECT",
        "HELO",
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "EOM",
        "RSET",
        "NOOP",
        "VRFY",
        "EXPN",
        "HELP",
        "QUIT",
        "UNKNOWN",
    }
)
CONTENT_HOOKS = frozenset({"HEADER", "EOH", "BODY"})
NOTIFY_HOOKS = frozenset({"ABORT", "DISCONNECT"})
ALL_HOOKS = REPLY_HOOKS | CONTENT_HOOKS | NOTIFY_HOOKS

# Command hooks that the protocol may call between BDAT chunks but never
# inside a DATA message (where every byte is content).
COMMAND_HOOKS = REPLY_HOOKS - {"CONNECT", "EOM"}

_TAG = re.compile(r"\[t(\d+)\]")


class Deliberate(Exception):
    """
    An exception a fuzz hook raises on purpose; the only failure the log may
    show.
    """


def _hasBareLineEnding(data: bytes) -> bool:
    lf = data.count(b"\n")
    return lf != data.count(b"\r") or lf != data.count(b"\r\n")


def _parseHeaders(raw: bytes) -> list[tuple[str, str]]:
    """
    The C{(name, value)} fields of a header section as received (the
    protocol splits its lines at LF and drops a CR before it).
    """
    parser = HeaderParser()
    fields = []
    pieces = raw.split(b"\n")
    if raw.endswith(b"\n"):
        pieces.pop()
    for piece in pieces:
        kind, completed = parser.line(piece[:-1] if piece.endswith(b"\r") else piece)
        if completed is not None:
            fields.append(completed)
        if kind in (END, BODY):
            return fields
    last = parser.finish()
    if last is not None:
        fields.append(last)
    return fields


class Outcome:
    """
    What one hook call answers, decided when it is called: C{kind} is
    C{"value"} (C{value} is a reply or L{None}), C{"raise"} (L{Deliberate})
    or C{"replyerror"} (C{value} is the reply of a L{ReplyError}).
    """

    def __init__(self, kind: str, value: Any = None) -> None:
        self.kind = kind
        self.value = value

    def deliver(self) -> Any:
        """
        Return or raise the outcome (inside a hook or a coroutine).
        """
        if self.kind == "raise":
            raise Deliberate("fuzz hook failure")
        if self.kind == "replyerror":
            raise ReplyError(self.value)
        return self.value

    def fire(self, d: Deferred[Any]) -> None:
        """
        Fire the pending Deferred C{d} with the outcome.
        """
        if self.kind == "raise":
            d.errback(Deliberate("fuzz hook failure"))
        elif self.kind == "replyerror":
            d.errback(ReplyError(self.value))
        else:
            d.callback(self.value)


class Conversation:
    """
    The hooks' side of one connection: chooses how each hook answers, and
    checks every call against the transaction rules:

      - CONNECT first (at most once); nothing but QUIT after a greeting that
        is not 2xx; nothing at all after DISCONNECT;
      - no hook while another one is in flight;
      - MAIL only after an accepted HELO/EHLO, outside a transaction;
      - RCPT only in a transaction, before its message started;
      - DATA only with a recipient, outside a message;
      - HEADER* EOH BODY* EOM in that order, only inside a message that DATA
        let in (354), and none after a content hook failed;
      - EOM at most once per transaction; ABORT only for an open
        transaction; HELO, EHLO, RSET and QUIT only once ABORT closed it;
      - no command hook inside a DATA message (only between BDAT chunks);
      - BODY chunks not empty and at most C{chunkSize} bytes;
      - a message that reaches EOM has CRLF line endings only (normalize
        policy, and DATA under the reject policy), and after DATA ends with
        CRLF;
      - DISCONNECT exactly once, after the connection closed, with no
        transaction left open.

    Violations are collected in C{violations} (the machine asserts there are
    none after every step).
    """

    def __init__(self, rng: Any, settings: Settings, hookStyle: str) -> None:
        self.rng = rng
        self.settings = settings
        self.hookStyle = hookStyle
        self.conn: SMTPTestConnection | None = None
        self.calls: list[str] = []
        self.violations: list[str] = []
        self.tag = 0
        self.inflight: str | None = None
        self.unfired: list[tuple[Deferred[Any], Outcome]] = []
        self.greeting: int | None = None
        self.helo = False
        self.transaction = False
        self.recipients = 0
        self.message: str | None = None  # None, "data" or "bdat"
        self.eoh = False
        self.failed = False
        self.binary = False
        self.content = bytearray()
        self.headers: list[tuple[str, str]] = []
        self.disconnects = 0

    # -- rules ------------------------------------------------------------

    def _bad(self, text: str) -> None:
        self.violations.append(f"{text} (calls so far: {self.calls[-12:]})")

    def check(self, name: str, args: tuple[Any, ...], handler: Any) -> None:
        """
        Check that the protocol may call hook C{name} now.
        """
        self.calls.append(name)
        if self.disconnects:
            self._bad(f"{name} called after DISCONNECT")
        if self.inflight is not None:
            self._bad(f"{name} called while {self.inflight} is in flight")
        if name == "DISCONNECT":
            self.disconnects += 1
            conn = self.conn
            if conn is not None and not conn.closed:
                self._bad("DISCONNECT before the connection closed")
            if self.transaction:
                self._bad("DISCONNECT with a transaction left open (no ABORT)")
            return
        if name == "CONNECT":
            if len(self.calls) != 1:
                self._bad("CONNECT is not the first hook")
            return
        if self.greeting is None:
            self._bad(f"{name} called before the greeting")
        elif self.greeting // 100 != 2 and name != "QUIT":
            self._bad(f"{name} called after a refused greeting")
        if name == "ABORT":
            if not self.transaction:
                self._bad("ABORT without an open transaction")
            self.transaction = False
            self.message = None
            return
        if name in COMMAND_HOOKS and self.message == "data":
            self._bad(f"{name} called inside a DATA message")
        if name in ("HELO", "EHLO", "RSET", "QUIT") and self.transaction:
            self._bad(f"{name} called with a transaction open (no ABORT first)")
        if name == "MAIL":
            if not self.helo:
                self._bad("MAIL before an accepted HELO/EHLO")
            if self.transaction:
                self._bad("MAIL inside a transaction")
        elif name == "RCPT":
            if not self.transaction:
                self._bad("RCPT outside a transaction")
            if self.message is not None:
                self._bad("RCPT after the message started")
        elif name == "DATA":
            if not self.transaction or not self.recipients:
                self._bad("DATA without a transaction with recipients")
            if self.message is not None:
                self._bad("DATA inside a message")
        elif name in CONTENT_HOOKS or name == "EOM":
            if self.message is None:
                self._bad(f"{name} outside a message")
            elif self.failed:
                self._bad(f"{name} after a content hook failed")
            elif name == "HEADER" and self.eoh:
                self._bad("HEADER after EOH")
            elif name == "EOH" and self.eoh:
                self._bad("EOH twice")
            elif name in ("BODY", "EOM") and not self.eoh:
                self._bad(f"{name} before EOH")
            if name == "HEADER":
                self.headers.append((args[0], args[1]))
            elif name == "EOH":
                transaction = handler.session.transaction
                raw = transaction.rawHeaders if transaction else b""
                self.content = bytearray(raw)
                expected = _parseHeaders(raw)
                if self.headers != expected:
                    self._bad(
                        f"HEADER calls {self.headers!r} do not match the header "
                        f"section {raw[:300]!r}"
                    )
            elif name == "BODY":
                chunk = args[0]
                if not chunk or len(chunk) > self.settings.chunkSize:
                    self._bad(f"BODY chunk of {len(chunk)} bytes")
                self.content += chunk
            elif name == "EOM":
                self._checkContent()

    def _checkContent(self) -> None:
        content = bytes(self.content)
        strict = self.settings.bareLineEndings == "normalize" or self.message == "data"
        if strict and not self.binary and _hasBareLineEnding(content):
            self._bad(f"message with a bare CR or LF reached EOM: {content[:200]!r}")
        if self.message == "data" and content and not content.endswith(b"\r\n"):
            self._bad(f"DATA message does not end with CRLF: {content[-40:]!r}")

    def settle(self, name: str, args: tuple[Any, ...], handler: Any, code: int) -> None:
        """
        The protocol got the answer of hook C{name}: C{code} is the reply
        code it turns into (451 for a failure), or 0 for a content hook that
        did not fail. Update the model of the conversation.
        """
        self.inflight = None
        kind = code // 100
        if name == "CONNECT":
            self.greeting = code
        elif name in ("HELO", "EHLO"):
            if kind == 2:
                self.helo = True
        elif name == "MAIL":
            if kind == 2:
                self.transaction = True
                self.recipients = 0
                transaction = handler.session.transaction
                self.binary = bool(
                    transaction and transaction.mailParams.get("BODY") == "BINARYMIME"
                )
        elif name == "RCPT":
            if kind == 2:
                self.recipients += 1
        elif name == "DATA":
            if kind == 3:
                assert self.conn is not None
                # BDAT reads its chunk raw while DATA is asked; DATA does not.
                chunked = self.conn.protocol._reader is not None
                self.message = "bdat" if chunked else "data"
                self.eoh = False
                self.failed = False
                self.content = bytearray()
                self.headers = []
        elif name in CONTENT_HOOKS:
            if code:
                self.failed = True
            elif name == "EOH":
                self.eoh = True
        elif name == "EOM":
            self.transaction = False
            self.message = None

    # -- answers ------------------------------------------------------------

    def nextTag(self) -> int:
        self.tag += 1
        return self.tag

    def outcome(self, name: str, args: tuple[Any, ...], handler: Any) -> Outcome:
        """
        Draw what hook C{name} answers.
        """
        r = self.rng.random()
        if name in NOTIFY_HOOKS:
            return Outcome("raise") if r < 0.1 else Outcome("value")
        if name in CONTENT_HOOKS:
            if r < 0.03:
                return Outcome("raise")
            if r < 0.05:
                return Outcome(
                    "replyerror", Reply(554, f"content refused [t{self.nextTag()}]")
                )
            return Outcome("value")
        default = defaultReply(name, handler, args)
        if name == "CONNECT":
            if r < 0.04:
                return Outcome("value", Reply(554, f"no service [t{self.nextTag()}]"))
            if r < 0.06:
                return Outcome("value", Reply(421, f"busy [t{self.nextTag()}]"))
            if r < 0.07:
                return Outcome("raise")
        elif r < 0.05:
            return Outcome("raise")
        elif r < 0.08:
            code = self.rng.choice([550, 451, 452]) if name != "DATA" else 554
            return Outcome(
                "replyerror", Reply(code, f"refused by error [t{self.nextTag()}]")
            )
        elif r < 0.15:
            code = self.rng.choice([550, 450, 553, 421 if r < 0.09 else 550])
            return Outcome("value", Reply(code, f"refused [t{self.nextTag()}]"))
        if r < 0.5:
            return Outcome("value", None)
        first = f"{default.lines[0]} [t{self.nextTag()}]"
        return Outcome(
            "value",
            Reply(default.code, first, *default.lines[1:], enhanced=default.enhanced),
        )

    def code(
        self, name: str, args: tuple[Any, ...], handler: Any, outcome: Outcome
    ) -> int:
        """
        The reply code the protocol makes of C{outcome} (0: a content or
        notification hook that did not fail).
        """
        if outcome.kind == "raise":
            return 451
        if outcome.kind == "replyerror":
            return int(outcome.value.code)
        if name not in REPLY_HOOKS:
            return 0
        reply = (
            outcome.value
            if outcome.value is not None
            else defaultReply(name, handler, args)
        )
        return int(reply.code)

    def answer(self, name: str, args: tuple[Any, ...], handler: Any) -> Any:
        """
        Run hook C{name}: check it, draw its outcome and its delivery, and
        return (or raise) what the handler gives the protocol.
        """
        self.check(name, args, handler)
        self.inflight = name
        outcome = self.outcome(name, args, handler)
        code = self.code(name, args, handler, outcome)
        if name in REPLY_HOOKS and outcome.kind == "value" and self.rng.random() < 0.02:
            handler.disconnect = True
        style = self.hookStyle
        if style == "mixed":
            style = self.rng.choice(
                ["sync"] * 6
                + ["fired", "pending", "pending", "coroutine", "coroutine-now"]
            )
        if style == "sync":
            self.settle(name, args, handler, code)
            return outcome.deliver()
        if style == "fired":
            self.settle(name, args, handler, code)
            try:
                return succeed(outcome.deliver())
            except Exception as e:
                return fail(e)
        d: Deferred[Any] = Deferred()

        def observed(result: Any) -> Any:
            timedOut = isinstance(result, Failure) and result.check(
                CancelledError, DeferredTimeout
            )
            self.settle(name, args, handler, 451 if timedOut else code)
            return result

        d.addBoth(observed)
        if style == "coroutine-now":
            outcome.fire(d)
        else:
            self.unfired.append((d, outcome))
        if style == "pending":
            return d

        async def hook() -> Any:
            return await d

        return hook()

    def fireOne(self) -> bool:
        """
        Fire the oldest pending Deferred still unfired; whether there was
        one.
        """
        while self.unfired:
            d, outcome = self.unfired.pop(0)
            if not d.called:
                outcome.fire(d)
                return True
        return False


class FuzzHandler(ESMTPHandler):
    """
    A handler whose every hook is answered by its L{Conversation}.
    """

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation


def _fuzzHook(name: str) -> Callable[..., Any]:
    def hook(self: FuzzHandler, *args: Any) -> Any:
        return self.conversation.answer(name, args, self)

    hook.__name__ = name
    hook.__doc__ = f"Answer {name} as the conversation decides."
    return hook


for _name in ALL_HOOKS:
    setattr(FuzzHandler, _name, _fuzzHook(_name))


# -- input ---------------------------------------------------------------------

ENDINGS = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n", b"\n\r"])

DOMAINS = st.sampled_from(
    [
        b"client.example",
        b"[192.0.2.7]",
        b"x",
        b"\xc3\xa9xample.org",
        b"a b",
        b"",
        b"\x00",
    ]
)
PATHS = st.sampled_from(
    [
        b"<a@example.org>",
        b"<>",
        b"<postmaster>",
        b"<Postmaster>",
        b"<b.c@example.org>",
        b"<@relay.example:a@example.org>",
        b"<a@[192.0.2.1]>",
        b"<\xc3\xbcser@ex\xc3\xa4mple.org>",
        b"<bad>",
        b"<a@b@c>",
        b"<" + b"x" * 70 + b"@example.org>",
        b"<a@" + b"d" * 260 + b">",
        b"a@example.org",
        b"<a@example.org",
        b"<\xff@example.org>",
        b'<"quoted local"@example.org>',
    ]
)
GOOD_PATHS = st.sampled_from(
    [
        b"<a@example.org>",
        b"<>",
        b"<b.c@example.org>",
        b"<postmaster>",
        b"<a@[192.0.2.1]>",
    ]
)
PARAMS = st.lists(
    st.sampled_from(
        [
            b"SIZE=100",
            b"SIZE=99999999999",
            b"SIZE=x",
            b"SIZE",
            b"BODY=8BITMIME",
            b"BODY=7BIT",
            b"BODY=BINARYMIME",
            b"BODY=junk",
            b"SMTPUTF8",
            b"SMTPUTF8=yes",
            b"RET=HDRS",
            b"RET=FULL",
            b"RET=x",
            b"ENVID=ab+2Bc",
            b"ENVID=bad+zz",
            b"NOTIFY=SUCCESS,FAILURE",
            b"NOTIFY=NEVER",
            b"NOTIFY=SUCCESS,SUCCESS",
            b"ORCPT=rfc822;a+40example.org",
            b"ORCPT=bad",
            b"X-FOO=bar",
            b"=",
            b"\x00",
        ]
    ),
    max_size=3,
).map(lambda ps: b"".join(b" " + p for p in ps))


def _case(verb: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([verb, verb.lower(), verb.capitalize()])


COMMANDS = st.one_of(
    st.tuples(st.sampled_from([b"EHLO", b"HELO", b"ehlo"]), DOMAINS).map(
        lambda t: t[0] + b" " + t[1]
    ),
    st.tuples(_case(b"MAIL"), PATHS, PARAMS).map(
        lambda t: t[0] + b" FROM:" + t[1] + t[2]
    ),
    st.tuples(_case(b"RCPT"), PATHS, PARAMS).map(
        lambda t: t[0] + b" TO:" + t[1] + t[2]
    ),
    st.sampled_from(
        [
            b"DATA",
            b"DATA x",
            b"RSET",
            b"RSET now",
            b"NOOP",
            b"NOOP hello",
            b"VRFY postmaster",
            b"VRFY",
            b"EXPN list",
            b"HELP",
            b"HELP MAIL",
            b"QUIT",
            b"QUIT now",
            b"STARTTLS",
            b"AUTH PLAIN AGFAAGI=",
            b"BDAT",
            b"BDAT x",
            b"BDAT 1 2",
            b"BDAT -1",
            b"BDAT 99999999999999999999",
            b"BDAT 0",
            b"BDAT 0 LAST",
            b"MAIL",
            b"RCPT",
            b"",
            b" ",
            b"\t",
            b"MAIL FROM:",
            b"RCPT TO:",
        ]
    ),
    st.tuples(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10),
        st.binary(max_size=40),
    ).map(lambda t: t[0].encode() + b" " + t[1]),
)

CONTENT_LINES = st.sampled_from(
    [
        b"Subject: fuzz",
        b"From: <a@example.org>",
        b"X-Folded: one",
        b"\ttwo",
        b" three",
        b"",
        b".",
        b"..",
        b".x",
        b"..x",
        b"X-Long: " + b"y" * 3000,
        b"no colon here",
        b"body line",
        b"\x00\x01\x02",
        b"\xff\xfe\xc3(",
        b"\r",
        b"MAIL FROM:<smuggled@example.org>",
        b"RCPT TO:<victim@example.org>",
        b"DATA",
    ]
)
TERMINATORS = st.sampled_from(
    [b"\r\n.\r\n"] * 4 + [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b".\r\n", b""]
)

HEADER_BLOCKS = st.tuples(
    st.lists(
        st.sampled_from(
            [
                b"Subject: fuzz",
                b"From: <a@example.org>",
                b"To: <b@example.org>",
                b"X-Folded: one",
                b"\ttwo",
                b"Received: from x by y",
                b"X-Empty:",
            ]
        ),
        max_size=5,
    ),
    st.sampled_from([b"\r\n"] * 4 + [b"\n"]),
    st.booleans(),
).map(lambda t: b"".join(line + t[1] for line in t[0]) + (t[1] if t[2] else b""))

MESSAGES = st.tuples(
    HEADER_BLOCKS, st.lists(st.tuples(CONTENT_LINES, ENDINGS), max_size=12), TERMINATORS
).map(lambda t: t[0] + b"".join(line + end for line, end in t[1]) + t[2])

BDATS = st.tuples(
    st.sampled_from([0, 1, 2, 10, 100, 1000, 5000, 70000]),
    st.booleans(),
    st.sampled_from([0, 0, 0, -1, 1, 5]),
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"Subject: b\r\n\r\n",
            b"A: 1\r\nB: 2\r\n folded\r\nC: 3\r\n\r\n",
            b"X: y\nZ: w\n\n",
            b"",
            b"\r\n.\r\n",
            b"no header",
        ]
    ),
).map(
    lambda t: (
        b"BDAT %d%s\r\n" % (t[0], b" LAST" if t[1] else b"")
        + ((t[4] + t[3]) * (t[0] // max(1, len(t[4] + t[3])) + 1))[
            : max(0, t[0] + t[2])
        ]
    )
)

GARBAGE = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"\x00" * 50,
            b"\xff\xfe\xfd\xfc\r\n",
            b"\xc3\x28\xa0\xa1\r\n",
            b"\r",
            b"\n",
            b"\r\n",
            b".\r\n",
            b"\r\n.\r\n",
            b"\r\n\r\n\r\n",
            b"\x1b[2J\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
    ),
)

LONG = st.tuples(
    st.sampled_from([509, 511, 2047, 2049, 4097, 65537, 262145, 1_000_000]),
    st.sampled_from([b"A", b"\x00", b"\xff", b".", b"\r", b" "]),
    ENDINGS,
).map(lambda t: t[1] * t[0] + t[2])

ITEMS = st.one_of(
    COMMANDS.flatmap(lambda c: ENDINGS.map(lambda e: c + e)),
    MESSAGES,
    BDATS,
    GARBAGE,
)

READ_SIZES = st.sampled_from([1, 2, 3, 7, 64, 511, 4096, 65536])

CLOCK_STEPS = st.sampled_from([0.0, 0.001, 0.5, 1.0, 4.0, 11.0, 31.0, 61.0, 301.0])


class FuzzMachine(RuleBasedStateMachine):
    """
    One connection at a time; the client side keeps what it may not send yet
    (the server paused reading while a hook is pending) and sends it once
    reading resumes, as a TCP peer would.
    """

    ENFORCE_SYNC = True
    BARE_LF = "reject"

    def __init__(self) -> None:
        super().__init__()
        self.globalStart = len(GLOBAL_EVENTS.events)
        self.conn: SMTPTestConnection | None = None
        self.conv: Conversation | None = None
        self.outbox: list[bytes] = []
        self.linesIn = 0
        self.readMax = 1

    # -- connections ----------------------------------------------------------

    @initialize(
        seed=st.integers(min_value=0, max_value=2**32 - 1),
        chunkSize=st.sampled_from([1, 7, 64, 1000, 65536]),
        maxLineLength=st.sampled_from([510, 1000, 2048]),
        maxHeaderSize=st.sampled_from([64, 700, 4096, 262144]),
        maxMessageSize=st.sampled_from([0, 300, 5000, 100000, 32 * 1024 * 1024]),
        maxRecipients=st.sampled_from([1, 2, 1000]),
        errors=st.sampled_from([(0, 0, 0.0), (3, 6, 1.0), (10, 20, 1.0), (2, 0, 0.5)]),
        timeouts=st.sampled_from(
            [(300.0, 60.0, 500), (30.0, 5.0, 500), (300.0, 0.0, 0)]
        ),
        greetingDelay=st.sampled_from([0.0, 0.0, 0.0, 3.0]),
        extensions=st.fixed_dictionaries(
            {
                "pipelining": st.booleans(),
                "chunking": st.booleans(),
                "binaryMIME": st.booleans(),
                "smtputf8": st.booleans(),
                "dsn": st.booleans(),
                "enhancedStatusCodes": st.booleans(),
            }
        ),
        hookStyle=st.sampled_from(["sync", "mixed", "mixed", "mixed"]),
    )
    def start(
        self,
        seed: int,
        chunkSize: int,
        maxLineLength: int,
        maxHeaderSize: int,
        maxMessageSize: int,
        maxRecipients: int,
        errors: tuple[int, int, float],
        timeouts: tuple[float, float, int],
        greetingDelay: float,
        extensions: dict[str, bool],
        hookStyle: str,
    ) -> None:
        soft, hard, delay = errors
        idle, hook, rate = timeouts
        self.settings = Settings(
            hostname=HOSTNAME,
            chunkSize=chunkSize,
            maxLineLength=maxLineLength,
            maxHeaderSize=maxHeaderSize,
            maxMessageSize=maxMessageSize,
            maxRecipients=maxRecipients,
            softErrorLimit=soft,
            hardErrorLimit=hard,
            errorDelay=delay,
            idleTimeout=idle,
            hookTimeout=hook,
            minDataRate=rate,
            greetingDelay=greetingDelay,
            enforceSync=self.ENFORCE_SYNC,
            bareLineEndings=self.BARE_LF,
            **cast(dict[str, Any], extensions),
        )
        # A plain Random seeded by hypothesis: hooks also run after the last
        # step (while the connection winds down), when hypothesis can no
        # longer draw.
        self.rng = random.Random(seed)
        self.hookStyle = hookStyle
        self.clock = Clock()
        self._connect()

    def _connect(self) -> None:
        conv = Conversation(self.rng, self.settings, self.hookStyle)
        self.conv = conv
        self.outbox = []
        self.linesIn = 0
        self.readMax = 1
        self.conn = SMTPTestConnection(
            lambda: FuzzHandler(conv), self.settings, clock=self.clock
        )
        conv.conn = self.conn
        self._check()

    def _finish(self) -> None:
        """
        Close the connection from the client side if it is open, let every
        pending hook and timer run out, and check that DISCONNECT came
        exactly once.
        """
        conn, conv = self.conn, self.conv
        if conn is None or conv is None:
            return
        conn.close()
        for _ in range(500):
            while conv.fireOne():
                pass
            if conv.disconnects:
                break
            self.clock.advance(61.0)
        assert conv.disconnects == 1, f"DISCONNECT called {conv.disconnects} times"
        self._check()

    def teardown(self) -> None:
        self._finish()
        # Unhandled errors in Deferreds are logged (globally) when the
        # Deferred is collected; a young-generation collection is cheap and
        # finds most of them here, the test case's tearDownClass the rest.
        gc.collect(1)
        assertNoGlobalFailures(self.globalStart)

    # -- the client ------------------------------------------------------------

    def _send(self, data: bytes, cuts: list[int], readSize: int) -> None:
        """
        Queue C{data} as reads: split at C{cuts}, then into reads of at most
        C{readSize} bytes (but never more than 64 reads for long data).
        """
        readSize = max(readSize, len(data) // 64)
        self.readMax = max(self.readMax, readSize)
        bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        for start, end in zip(bounds, bounds[1:], strict=False):
            for pos in range(start, end, readSize):
                self.outbox.append(data[pos : min(end, pos + readSize)])
        self._flush()

    def _flush(self) -> None:
        conn = self.conn
        assert conn is not None
        while self.outbox:
            if conn.closed:
                self.outbox = []
                return
            if conn.transport.producerState == "paused":
                return
            data = self.outbox.pop(0)
            self.linesIn += data.count(b"\n")
            conn.send(data)  # an exception here fails the test
            self._checkMemory()

    # -- rules ---------------------------------------------------------------

    @precondition(lambda self: self.conn is not None and not self.conn.closed)
    @rule(command=COMMANDS, ending=ENDINGS, readSize=READ_SIZES)
    def command(self, command: bytes, ending: bytes, readSize: int) -> None:
        """
        One command line, as a client that waits for each reply sends it.
        """
        self._send(command + ending, [], readSize)

    @precondition(lambda self: self.conn is not None and not self.conn.closed)
    @rule(
        greet=st.booleans(),
        sender=st.one_of(GOOD_PATHS, PATHS),
        recipients=st.lists(st.one_of(GOOD_PATHS, PATHS), min_size=1, max_size=3),
        message=MESSAGES,
        bdat=st.booleans(),
        readSize=READ_SIZES,
    )
    def transaction(
        self,
        greet: bool,
        sender: bytes,
        recipients: list[bytes],
        message: bytes,
        bdat: bool,
        readSize: int,
    ) -> None:
        """
        A plausible transaction (after EHLO, if C{greet}), one command per
        read, so that it gets deep into the conversation.
        """
        if greet:
            self._send(b"EHLO client.example\r\n", [], 4096)
        self._send(b"MAIL FROM:" + sender + b"\r\n", [], 4096)
        for recipient in recipients:
            self._send(b"RCPT TO:" + recipient + b"\r\n", [], 4096)
        if bdat:
            self._send(b"BDAT %d LAST\r\n" % len(message) + message, [], readSize)
        else:
            self._send(b"DATA\r\n", [], 4096)
            self._send(message, [], readSize)

    @precondition(lambda self: self.conn is not None and not self.conn.closed)
    @rule(
        greeting=st.sampled_from(
            [b"EHLO client.example\r\n", b"HELO client.example\r\n"]
        )
    )
    def hello(self, greeting: bytes) -> None:
        """
        HELO or EHLO, to reach the transaction states often.
        """
        self._send(greeting, [], 4096)

    @precondition(lambda self: self.conn is not None and not self.conn.closed)
    @rule(
        items=st.lists(ITEMS, min_size=1, max_size=6),
        cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=8),
        readSize=READ_SIZES,
    )
    def burst(self, items: list[bytes], cuts: list[int], readSize: int) -> None:
        """
        Commands, message content, BDAT chunks and garbage, back to back
        (pipelined, whether or not allowed), split into reads at random.
        """
        self._send(b"".join(items), cuts, readSize)

    @precondition(lambda self: self.conn is not None and not self.conn.closed)
    @rule(line=LONG, readSize=st.sampled_from([4096, 65536]))
    def longLine(self, line: bytes, readSize: int) -> None:
        """
        One very long line (up to 1 MB), in many reads. With a tiny
        C{chunkSize} the line is cut to 2000 chunks, to bound the number of
        BODY calls (and the run time).
        """
        limit = max(70000, 2000 * self.settings.chunkSize)
        if len(line) > limit:
            line = line[: limit - 2] + line[-2:]
        self._send(line, [], readSize)

    @precondition(lambda self: self.conn is not None)
    @rule(seconds=CLOCK_STEPS)
    def advance(self, seconds: float) -> None:
        """
        Time passes (timeouts, the greeting delay, error delays, hook
        timeouts).
        """
        self.clock.advance(seconds)
        self._afterServerEvent()

    @precondition(lambda self: self.conv is not None and self.conv.unfired)
    @rule()
    def fire(self) -> None:
        """
        The pending hook answers.
        """
        assert self.conv is not None
        self.conv.fireOne()
        self._afterServerEvent()

    @precondition(lambda self: self.conn is not None and not self.conn.closed)
    @rule()
    def drop(self) -> None:
        """
        The client goes away.
        """
        assert self.conn is not None
        self.conn.close()
        self._check()

    @precondition(lambda self: self.conn is not None and self.conn.closed)
    @rule()
    def reconnect(self) -> None:
        """
        The connection is over: check its end, then connect again.
        """
        self._finish()
        self._connect()

    def _afterServerEvent(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self._flush()
        self._check()

    # -- invariants -------------------------------------------------------------

    @invariant()
    def checked(self) -> None:
        if self.conn is not None:
            self._check()

    def _checkMemory(self) -> None:
        conn = self.conn
        assert conn is not None
        protocol = conn.protocol
        settings = self.settings
        lineMax = max(settings.maxLineLength, settings.maxHeaderSize) + 2
        read = self.readMax
        # While input is held (a pending hook, a greeting delay, a client not
        # reading its replies) up to HELD_INPUT bytes may wait unprocessed
        # before the transport stops reading.
        limits = {
            "_buffer": max(lineMax, HELD_INPUT) + read,
            "_pushedBack": 0,
            "_bodyQueue": 2 * (lineMax + read) + settings.chunkSize,
            "_rawHeaders": 2 * settings.maxHeaderSize + 2 * read + 4,
            "_partial": settings.maxHeaderSize,
        }
        reader = protocol._message  # the reader of the message, if any
        message = reader.content if reader is not None else None
        for name, limit in limits.items():
            owner = protocol if name in ("_buffer", "_pushedBack") else message
            size = len(getattr(owner, name, b"")) if owner is not None else 0
            assert size <= limit, f"{name} holds {size} bytes (limit {limit})"

    def _check(self) -> None:
        conn, conv = self.conn, self.conv
        assert conn is not None and conv is not None
        assert not conv.violations, "\n".join(conv.violations)
        unexpected = [
            e
            for e in conn.log.events
            if "log_failure" in e and not e["log_failure"].check(Deliberate)
        ]
        assert not unexpected, (
            f"failures logged: {[e['log_failure'] for e in unexpected]}"
        )
        output = conn.transport.value()
        replies, rest = parseReplies(output)  # raises on malformed output
        assert rest == b"", f"a partial reply was written: {rest[-200:]!r}"
        assert len(replies) <= self.linesIn + 2, (
            f"{len(replies)} replies for {self.linesIn} lines: {replies[-5:]!r}"
        )
        tags = [
            int(m) for reply in replies for m in _TAG.findall(" ".join(reply.lines))
        ]
        assert tags == sorted(set(tags)), f"hook replies out of order: {tags}"
        assert not tags or tags[-1] <= conv.tag
        for index, reply in enumerate(replies):
            if reply.code in (221, 421) or (
                reply.code == 554 and "synchronization" in reply.text
            ):
                assert conn.closed, f"{reply!r} but the connection is open"
                after = replies[index + 1 :]
                assert not after, (
                    f"replies written after the closing {reply!r}: {after}"
                )
        self._checkMemory()


GLOBAL_EVENTS = LogCollector()
"""
Events of the global log publisher while a fuzz test case runs (an
"Unhandled error in Deferred" goes there, not to the connection's log).
"""


def assertNoGlobalFailures(start: int = 0) -> None:
    """
    No failure was logged globally since event number C{start}.
    """
    failures = [e for e in GLOBAL_EVENTS.events[start:] if "log_failure" in e]
    assert not failures, (
        f"failures logged globally: {[e['log_failure'] for e in failures]}"
    )


# Shrinking a failing run of this machine can take many minutes (hypothesis
# gives up after five per test); the unshrunk steps are printed instead. To
# shrink a failure, add Phase.shrink to the phases below and rerun (the
# failing example is replayed from the hypothesis database).
FUZZ_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


class _WatchGlobalLog:
    """
    Mixin for the test cases: watch the global log while the machine runs,
    and after a full collection check that no Deferred failed unhandled.
    """

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        GLOBAL_EVENTS.events.clear()
        globalLogPublisher.addObserver(GLOBAL_EVENTS)

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            gc.collect()
            assertNoGlobalFailures()
        finally:
            globalLogPublisher.removeObserver(GLOBAL_EVENTS)
            super().tearDownClass()  # type: ignore[misc]


def _testCase(enforceSync: bool, bareLF: str) -> Any:
    """
    The unittest test case that runs a L{FuzzMachine} with these fixed
    settings.
    """
    name = f"FuzzMachine_{'sync' if enforceSync else 'nosync'}_{bareLF}"
    machine: Any = type(
        name, (FuzzMachine,), {"ENFORCE_SYNC": enforceSync, "BARE_LF": bareLF}
    )
    machine.TestCase.settings = FUZZ_SETTINGS
    return machine.TestCase


_SyncReject: Any = _testCase(True, "reject")
_SyncNormalize: Any = _testCase(True, "normalize")
_NoSyncReject: Any = _testCase(False, "reject")
_NoSyncNormalize: Any = _testCase(False, "normalize")


class TestFuzzEnforceSyncReject(_WatchGlobalLog, _SyncReject):  # type: ignore[misc]
    """
    Hostile input with C{enforceSync} on and bare line endings rejected.
    """


class TestFuzzEnforceSyncNormalize(_WatchGlobalLog, _SyncNormalize):  # type: ignore[misc]
    """
    Hostile input with C{enforceSync} on and bare line endings normalized.
    """


class TestFuzzNoSyncReject(_WatchGlobalLog, _NoSyncReject):  # type: ignore[misc]
    """
    Hostile input with C{enforceSync} off and bare line endings rejected.
    """


class TestFuzzNoSyncNormalize(_WatchGlobalLog, _NoSyncNormalize):  # type: ignore[misc]
    """
    Hostile input with C{enforceSync} off and bare line endings normalized.
    """


# Only the subclasses above are to be collected.
del _SyncReject, _SyncNormalize, _NoSyncReject, _NoSyncNormalize
