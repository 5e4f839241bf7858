"""
Pipelining and asynchronous hooks: replies stay in command order, one hook
runs at a time, and a pending hook pauses the transport (backpressure).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler, Reply

from .test_protocol import HOOKS, Recorder, connect, recorderFactory, startData

SESSION = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<alice@example.org>\r\n"
    b"RCPT TO:<bob@example.net>\r\n"
    b"RCPT TO:<carol@example.net>\r\n"
    b"DATA\r\n"
    b"Subject: pipelined\r\n"
    b"X-Two: 2\r\n"
    b"\r\n"
    b"body line 1\r\n"
    b"body line 2\r\n"
    b".\r\n"
    b"NOOP\r\n"
    b"QUIT\r\n"
)

EXPECTED_CODES = [250, 250, 250, 250, 354, 250, 250, 221]


class SlowHandler(Recorder):
    """
    A recorder whose every hook answers (with its default) only after a
    delay on C{clock}, and which notes any moment when two hooks were in
    flight at once.

    @ivar delays: hook name to delay in seconds (default 1).
    @ivar overlaps: C{(running, started)} pairs seen; must stay empty.
    @ivar written: for each hook call, its name and how many bytes the
        server had written when it was called.
    """

    def __init__(
        self, clock: Clock, delays: dict[str, float], output: Callable[[], bytes]
    ) -> None:
        super().__init__()
        self.clock = clock
        self.delays = delays
        self.output = output
        self.running: str | None = None
        self.overlaps: list[tuple[str, str]] = []
        self.written: list[tuple[str, int]] = []


def _slowHook(name: str) -> Any:
    recorded = getattr(Recorder, name)

    def hook(self: SlowHandler, *args: Any) -> Deferred[Any]:
        if self.running is not None:
            self.overlaps.append((self.running, name))
        self.running = name
        self.written.append((name, len(self.output())))
        result = recorded(self, *args)

        def finished(_: object) -> Any:
            self.running = None
            return result

        delay = self.delays.get(name, 1.0)
        return deferLater(self.clock, delay, lambda: None).addCallback(finished)

    hook.__name__ = name
    hook.__doc__ = f"Record {name}, answer after a delay."
    return hook


for _name in HOOKS:
    setattr(SlowHandler, _name, _slowHook(_name))


def slowConnection(delays: dict[str, float] | None = None, **settings: Any) -> Any:
    """
    A connection to a L{SlowHandler} whose delays run on the connection's
    clock (hook timeouts off). CONNECT is slow too: advance the clock for
    the greeting.
    """
    clock = Clock()
    conns: list[Any] = []

    def factory() -> SlowHandler:
        return SlowHandler(
            clock, delays or {}, lambda: conns[0].transport.value() if conns else b""
        )

    conns.append(connect(factory, clock=clock, hookTimeout=0, **settings))
    return conns[0]


def runClock(conn: Any, seconds: int = 100) -> None:
    """
    Advance the clock one second at a time, C{seconds} times (well below
    the idle timeout), so every delayed hook gets to fire.
    """
    for _ in range(seconds):
        conn.clock.advance(1)


class OrderTests(SynchronousTestCase):
    """
    Replies come out in command order whatever the hooks' timing.
    """

    def test_wholeSessionPipelined(self) -> None:
        """
        A whole session in one read (enforceSync off, so the server takes
        it) with every hook asynchronous: replies in order, never two hooks
        at once, hooks called in command order.
        """
        conn = slowConnection(enforceSync=False)
        conn.clock.advance(1)
        self.assertEqual(conn.replies()[0].code, 220)
        conn.send(SESSION)
        runClock(conn)
        self.assertEqual([r.code for r in conn.replies()], EXPECTED_CODES)
        handler = conn.handler
        self.assertEqual(handler.overlaps, [])
        self.assertEqual(
            handler.names(),
            [
                "CONNECT",
                "EHLO",
                "MAIL",
                "RCPT",
                "RCPT",
                "DATA",
                "HEADER",
                "HEADER",
                "EOH",
                "BODY",
                "EOM",
                "NOOP",
                "QUIT",
                "DISCONNECT",
            ],
        )
        self.assertEqual(handler.body(), b"body line 1\r\nbody line 2\r\n")

    def test_decreasingDelays(self) -> None:
        """
        When later hooks are faster than earlier ones, replies still come
        out in command order.
        """
        delays = {"MAIL": 5.0, "RCPT": 1.0, "DATA": 0.5, "NOOP": 0.1}
        conn = slowConnection(delays)
        runClock(conn)
        self.assertEqual([r.code for r in conn.replies()], [220])
        conn.send(b"EHLO client.example\r\n")
        runClock(conn)
        self.assertEqual([r.code for r in conn.replies()], [250])
        conn.send(
            b"NOOP\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
            b"RCPT TO:<c@example.net>\r\nDATA\r\n"
        )
        runClock(conn)
        replies = conn.replies()
        self.assertEqual([r.code for r in replies], [250, 250, 250, 250, 354])
        self.assertEqual(replies[1].enhanced, "2.1.0")
        self.assertIn("b@example.net", replies[2].text)
        self.assertIn("c@example.net", replies[3].text)

    def test_hookCalledAfterPreviousReply(self) -> None:
        """
        Each hook is called only after the reply to the previous command
        has been written (a whole session in one read, enforceSync off).
        """
        conn = slowConnection(enforceSync=False)
        conn.send(SESSION)
        runClock(conn)
        written = dict.fromkeys(["EHLO", "MAIL", "RCPT", "DATA", "NOOP", "QUIT"], 0)
        output = conn.transport.value()
        for name, size in conn.handler.written:
            if name in written:
                written[name] = size
        # By the time MAIL was called, the greeting and the EHLO reply
        # were out; by QUIT, everything but the 221.
        self.assertIn(b"\r\n250 LIMITS RCPTMAX=1000\r\n", output[: written["MAIL"]])
        self.assertIn(b"354 ", output[: written["NOOP"]])
        self.assertEqual(output[: written["QUIT"]].count(b"\r\n250 2.0.0 OK"), 1)
        self.assertNotIn(b"221", output[: written["QUIT"]])

    def test_pendingHookHoldsPipelinedCommands(self) -> None:
        """
        While MAIL is pending, the pipelined RCPT is neither called nor
        answered.
        """
        pending: list[Deferred[Any]] = []

        def mail(handler: Recorder, sender: str, params: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d

        conn = connect(recorderFactory(MAIL=mail))
        conn.command("EHLO client.example")
        conn.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nNOOP\r\n")
        self.assertEqual(conn.replies(), [])
        self.assertNotIn("RCPT", conn.handler.names())
        pending[0].callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250, 250, 250])
        self.assertEqual(conn.handler.names()[-3:], ["MAIL", "RCPT", "NOOP"])

    def test_dataReceivedWhilePaused(self) -> None:
        """
        Bytes that arrive while a hook is pending are kept and processed in
        order after it fires.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(NOOP=lambda h: d))
        conn.command("EHLO client.example")
        conn.send(b"NOOP\r\nHE")
        conn.send(b"LP\r\nVRFY x\r")
        conn.send(b"\nRSET\r\n")
        self.assertEqual(conn.handler.names(), ["CONNECT", "EHLO", "NOOP"])
        d.callback((250, "noop done"))
        self.assertEqual([r.code for r in conn.replies()], [250, 214, 252, 250])
        self.assertEqual(conn.handler.names()[-3:], ["HELP", "VRFY", "RSET"])

    def test_eomPendingHoldsNextCommands(self) -> None:
        """
        Commands pipelined after the end of data wait for a pending EOM.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(EOM=lambda h: d))
        startData(self, conn)
        conn.send(b"\r\nhello\r\n.\r\nMAIL FROM:<x@example.org>\r\nNOOP\r\n")
        self.assertEqual(conn.replies(), [])
        self.assertEqual(conn.handler.names()[-1], "EOM")
        self.assertEqual(conn.transport.producerState, "paused")
        d.callback((250, "queued"))
        replies = conn.replies()
        self.assertEqual([r.code for r in replies], [250, 250, 250])
        self.assertEqual(replies[0].text, "queued")
        self.assertIn(("MAIL", ("x@example.org", {})), conn.handler.calls)
        self.assertEqual(conn.transport.producerState, "producing")

    def test_asyncDataThenContent(self) -> None:
        """
        Message content pipelined behind an asynchronous DATA (enforceSync
        off, so the server reads on) is read as content once DATA answers
        354, not as commands.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(DATA=lambda h: d), enforceSync=False)
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.net>")
        conn.send(b"DATA\r\nSubject: s\r\n\r\nQUIT\r\n.\r\nNOOP\r\n")
        self.assertEqual(conn.replies(), [])
        d.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [354, 250, 250])
        self.assertEqual(conn.handler.body(), b"QUIT\r\n")
        self.assertNotIn("QUIT", conn.handler.names())

    def test_asyncDataRefusedThenCommands(self) -> None:
        """
        If an asynchronous DATA refuses, what follows is read as commands
        (enforceSync off, so the server reads on after DATA).
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(DATA=lambda h: d), enforceSync=False)
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.net>")
        conn.send(b"DATA\r\nNOOP\r\n")
        d.callback((451, "4.3.2 not now"))
        self.assertEqual([r.code for r in conn.replies()], [451, 250])
        self.assertIn("NOOP", conn.handler.names())

    def test_headerPendingHoldsLines(self) -> None:
        """
        While a HEADER hook is pending, later header lines and the body wait;
        HEADER calls come one at a time, in order.
        """
        pending: list[Deferred[Any]] = []

        def header(handler: Recorder, name: str, value: str) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d

        conn = connect(recorderFactory(HEADER=header))
        startData(self, conn)
        conn.send(b"A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody\r\n.\r\n")
        for expected in ("A", "B", "C"):
            value = {"A": "1", "B": "2", "C": "3"}[expected]
            self.assertEqual(conn.handler.calls[-1], ("HEADER", (expected, value)))
            self.assertEqual(conn.transport.producerState, "paused")
            self.assertNotIn("EOH", conn.handler.names())
            pending[-1].callback(None)
        self.assertEqual(conn.handler.names()[-3:], ["EOH", "BODY", "EOM"])
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertEqual(conn.transport.producerState, "producing")

    def test_coroutineHooksPipelined(self) -> None:
        """
        C{async def} hooks awaiting Deferreds keep replies in order.
        """
        clock = Clock()

        class Handler(ESMTPHandler):
            async def MAIL(self, sender: str, params: Any) -> Reply:
                await deferLater(clock, 3, lambda: None)
                return Reply(250, f"sender {sender}")

            async def RCPT(self, recipient: str, params: Any) -> Reply:
                await deferLater(clock, 1, lambda: None)
                return Reply(250, f"rcpt {recipient}")

            async def EOM(self) -> Reply:
                await deferLater(clock, 2, lambda: None)
                return Reply(250, "stored")

        conn = connect(Handler, clock=clock, hookTimeout=0)
        # A client that pipelines as RFC 2920 allows: it waits after EHLO
        # and after DATA.
        texts = [conn.command("EHLO c.example").text]
        conn.send(
            b"MAIL FROM:<a@example.org>\r\n"
            b"RCPT TO:<b@example.net>\r\n"
            b"RCPT TO:<c@example.net>\r\nDATA\r\n"
        )
        for _ in range(10):
            clock.advance(1)
        texts += [r.text for r in conn.replies()]
        self.assertEqual(len(texts), 5)
        conn.send(b"\r\nbody\r\n.\r\nQUIT\r\n")
        for _ in range(10):
            clock.advance(1)
        texts += [r.text for r in conn.replies()]
        self.assertEqual(
            texts[1:4],
            ["sender a@example.org", "rcpt b@example.net", "rcpt c@example.net"],
        )
        self.assertEqual(texts[5], "stored")
        self.assertEqual(texts[-1], "Closing connection")
        self.assertEqual(len(texts), 7)

    def test_asyncConnectThenPipelined(self) -> None:
        """
        With a slow CONNECT and enforceSync off, a pipelined session sent
        before the greeting is answered after it, in order.
        """
        conn = slowConnection({"CONNECT": 2.0}, enforceSync=False)
        self.assertIsNone(conn.greeting)
        conn.send(SESSION)
        runClock(conn)
        codes = [r.code for r in conn.replies()]
        self.assertEqual(codes, [220] + EXPECTED_CODES)


class BackpressureTests(SynchronousTestCase):
    """
    A pending BODY or EOM hook pauses the transport; it resumes after.
    """

    def setUp(self) -> None:
        self.pending: list[Deferred[Any]] = []

        def later(handler: Recorder, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d

        self.conn = connect(recorderFactory(BODY=later, EOM=later), chunkSize=10)
        startData(self, self.conn)

    def test_pausedWhileBodyPending(self) -> None:
        """
        The transport is paused while each BODY is pending, one BODY at a
        time, and resumed once the message is answered.
        """
        conn = self.conn
        body = b"0123456789" * 5 + b"\r\n"
        self.assertEqual(conn.transport.producerState, "producing")
        conn.send(b"\r\n" + body + b".\r\nNOOP\r\n")
        seen = 0
        for _ in range(20):
            if conn.handler.names()[-1] != "BODY":
                break
            self.assertEqual(conn.transport.producerState, "paused")
            self.assertEqual(len(self.pending), seen + 1)
            self.assertEqual(conn.replies(), [])
            seen += 1
            self.pending[-1].callback(None)
        self.assertEqual(conn.handler.names()[-1], "EOM")
        self.assertEqual(conn.transport.producerState, "paused")
        self.assertEqual(conn.handler.body(), body)
        chunks = [a[0] for n, a in conn.handler.calls if n == "BODY"]
        self.assertTrue(all(len(c) <= 10 for c in chunks))
        self.assertEqual(seen, len(chunks))
        self.pending[-1].callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250, 250])
        self.assertEqual(conn.transport.producerState, "producing")

    def test_bodyArrivingWhilePaused(self) -> None:
        """
        Body bytes that arrive while BODY is pending are handed over later,
        in order, and the end of data is still found.
        """
        conn = self.conn
        conn.send(b"\r\nfirst ")
        self.assertEqual(conn.transport.producerState, "paused")
        conn.send(b"second\r\n.")
        conn.send(b"\r\nNOOP\r\n")
        for _ in range(20):
            if not self.pending or self.pending[-1].called:
                break
            if conn.handler.names()[-1] == "EOM":
                break
            self.pending[-1].callback(None)
        self.assertEqual(conn.handler.names()[-1], "EOM")
        self.assertEqual(conn.handler.body(), b"first second\r\n")
        self.pending[-1].callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250, 250])

    def test_noResumeAfterDisconnect(self) -> None:
        """
        A hook finishing after the client left does not resume the
        transport or raise; DISCONNECT follows.
        """
        conn = self.conn
        conn.send(b"\r\nsome body")
        conn.close()
        self.pending[-1].callback(None)
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])

    def test_idleTimerStoppedWhileHookPending(self) -> None:
        """
        A slow hook does not make the client look idle; the idle timer
        starts again once the hook has answered.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(NOOP=lambda h: d), idleTimeout=10, hookTimeout=0)
        conn.send(b"NOOP\r\n")
        conn.clock.advance(100)
        self.assertEqual(conn.replies(), [])
        self.assertFalse(conn.closed)
        d.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250])
        conn.clock.advance(10)
        self.assertEqual([r.code for r in conn.replies()], [421])
        self.assertTrue(conn.closed)


class OutputTests(SynchronousTestCase):
    """
    How replies leave: together for pipelined input, and never piling up
    input while the client does not take its replies.
    """

    def test_pipelinedRepliesInOneWrite(self) -> None:
        """
        The replies to a pipelined group (MAIL, RCPT, RCPT, DATA) go to the
        transport in one write, so that they leave in one segment rather
        than one per reply behind Nagle's algorithm.
        """
        conn = connect()
        conn.command("EHLO client.example")
        writes: list[bytes] = []
        original = conn.transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        conn.transport.write = write
        conn.send(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
            b"RCPT TO:<c@example.org>\r\nDATA\r\n"
        )
        self.assertEqual(len(writes), 1)
        self.assertEqual([r.code for r in conn.replies()], [250, 250, 250, 354])

    def test_slowReaderHoldsBoundedInput(self) -> None:
        """
        A client that floods commands while reading its replies more slowly
        than they come: the protocol stops processing whenever the
        transport's write buffer is full, and the input it holds stays
        within HELD_INPUT plus one read, however long this goes on.
        """
        from esmtpkit.smtp.connection import HELD_INPUT

        conn = connect()
        conn.command("EHLO client.example")
        protocol, transport = conn.protocol, conn.transport
        unsent = 0
        full = False
        original = transport.write

        def write(data: bytes) -> None:
            nonlocal unsent, full
            original(data)
            unsent += len(data)
            if unsent > 65536 and not full:
                full = True
                protocol.pauseProducing()

        transport.write = write
        flood = b"RSET\r\n" * (65536 // 6)
        largest = 0
        for _turn in range(300):
            if transport.producerState != "paused":
                protocol.dataReceived(flood)
            largest = max(largest, len(protocol._buffer))
            unsent = 0  # the client reads everything written so far
            if full:
                full = False
                protocol.resumeProducing()
            transport.clear()
        self.assertLessEqual(largest, HELD_INPUT + len(flood))
        self.assertFalse(conn.closed)
