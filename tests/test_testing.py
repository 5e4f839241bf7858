"""
Tests for L{esmtpkit.testing}: L{parseReplies}, L{dotStuff} and the
L{SMTPTestConnection} harness itself.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler, Reply, threads
from esmtpkit.handlers import Maildir
from esmtpkit.testing import (
    LMTPTestConnection,
    LogCollector,
    SMTPTestConnection,
    dotStuff,
    parseReplies,
)
from esmtpkit.threads import runInline

from .helpers import maildirFiles, splitReceived, tempDir


def greetingOf(conn: SMTPTestConnection) -> Reply:
    """
    The greeting of C{conn}, which must have been sent.
    """
    assert conn.greeting is not None, "no greeting yet"
    return conn.greeting


class ParseRepliesTests(SynchronousTestCase):
    """
    L{parseReplies} turns server output back into replies.
    """

    def test_single(self) -> None:
        """
        One complete reply, nothing left over.
        """
        self.assertEqual(parseReplies(b"250 OK\r\n"), ([Reply(250, "OK")], b""))

    def test_multiLine(self) -> None:
        """
        C{250-} lines continue a reply until the C{250 } line.
        """
        replies, rest = parseReplies(b"250-first\r\n250-second\r\n250 last\r\n")
        self.assertEqual(replies, [Reply(250, "first", "second", "last")])
        self.assertEqual(rest, b"")

    def test_several(self) -> None:
        """
        Several replies in a row come out in order.
        """
        replies, rest = parseReplies(b"220 hi\r\n250-a\r\n250 b\r\n354 go\r\n")
        self.assertEqual(
            replies, [Reply(220, "hi"), Reply(250, "a", "b"), Reply(354, "go")]
        )

    def test_incompleteLine(self) -> None:
        """
        A line without CRLF is returned as the rest.
        """
        self.assertEqual(parseReplies(b"250 OK\r\n25"), ([Reply(250, "OK")], b"25"))
        self.assertEqual(parseReplies(b"250 O"), ([], b"250 O"))

    def test_incompleteMultiLine(self) -> None:
        """
        A multi-line reply whose last line has not arrived is all rest,
        including its complete lines.
        """
        replies, rest = parseReplies(b"250 OK\r\n250-first\r\n250-second\r\n250 la")
        self.assertEqual(replies, [Reply(250, "OK")])
        self.assertEqual(rest, b"250-first\r\n250-second\r\n250 la")
        replies, rest = parseReplies(rest + b"st\r\n")
        self.assertEqual(
            (replies, rest), ([Reply(250, "first", "second", "last")], b"")
        )

    def test_enhanced(self) -> None:
        """
        Enhanced codes are parsed, and taken off every line.
        """
        replies, _ = parseReplies(b"250-2.0.0 a\r\n250 2.0.0 b\r\n550 5.7.1 no\r\n")
        self.assertEqual(
            replies,
            [
                Reply(250, "a", "b", enhanced="2.0.0"),
                Reply(550, "no", enhanced="5.7.1"),
            ],
        )

    def test_bareCode(self) -> None:
        """
        A line that is only the code is a reply with empty text.
        """
        self.assertEqual(parseReplies(b"250\r\n"), ([Reply(250, "")], b""))

    def test_empty(self) -> None:
        """
        No output, no replies.
        """
        self.assertEqual(parseReplies(b""), ([], b""))

    def test_malformed(self) -> None:
        """
        Output that is not SMTP replies raises ValueError.
        """
        for bad in (b"hello\r\n", b"25 x\r\n", b"250x\r\n", b"2a0 x\r\n", b"\r\n"):
            self.assertRaises(ValueError, parseReplies, bad)

    def test_mixedCodes(self) -> None:
        """
        The lines of one reply must all carry the same code; output where
        they do not is not a well-formed reply and raises ValueError.
        """
        self.assertRaises(ValueError, parseReplies, b"250-first\r\n550 second\r\n")

    def test_roundTrip(self) -> None:
        """
        What L{Reply.toBytes} writes parses back to the same reply.
        """
        for reply in (
            Reply(250, "a", "b", "c", enhanced="2.1.5"),
            Reply(214, "help"),
            Reply(550, "5.7.1 denied"),
        ):
            self.assertEqual(parseReplies(reply.toBytes()), ([reply], b""))


class DotStuffTests(SynchronousTestCase):
    """
    L{dotStuff} prepares a message for sending after DATA.
    """

    def test_terminator(self) -> None:
        """
        The message gets a final CRLF if needed, then ".\\r\\n".
        """
        self.assertEqual(dotStuff(b"hi\r\n"), b"hi\r\n.\r\n")
        self.assertEqual(dotStuff(b"hi"), b"hi\r\n.\r\n")
        self.assertEqual(dotStuff(b""), b".\r\n")

    def test_stuffing(self) -> None:
        """
        Every line starting with a dot gets another one, the first too.
        """
        self.assertEqual(
            dotStuff(b".a\r\nb\r\n..c\r\n.\r\n"), b"..a\r\nb\r\n...c\r\n..\r\n.\r\n"
        )


class ConnectionTests(SynchronousTestCase):
    """
    L{SMTPTestConnection} drives a real protocol in memory.
    """

    def test_greetingAndCommand(self) -> None:
        """
        The greeting is parsed; C{command} returns the one reply.
        """
        conn = SMTPTestConnection(ESMTPHandler)
        self.assertEqual(greetingOf(conn).code, 220)
        self.assertTrue(greetingOf(conn).lines[0].startswith("mx.example.test "))
        self.assertEqual(conn.command("NOOP"), Reply(250, "OK", enhanced="2.0.0"))
        self.assertEqual(conn.command(b"RSET").code, 250)

    def test_commandNeedsOneReply(self) -> None:
        """
        C{command} raises AssertionError when the reply is not out yet.
        """
        d: Deferred[Any] = Deferred()

        class Slow(ESMTPHandler):
            def NOOP(self) -> Deferred[Any]:
                return d

        conn = SMTPTestConnection(Slow)
        self.assertRaises(AssertionError, conn.command, "NOOP")
        d.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250])

    def test_repliesOnlyNew(self) -> None:
        """
        C{replies} returns only what was written since the last call, and
        keeps an incomplete reply for later.
        """
        conn = SMTPTestConnection(ESMTPHandler)
        self.assertEqual(conn.replies(), [])
        conn.command("EHLO c.example")  # pipelining needs EHLO first
        conn.send(b"NOOP\r\nNOOP\r\n")
        self.assertEqual(len(conn.replies()), 2)
        self.assertEqual(conn.replies(), [])

    def test_sendMessage(self) -> None:
        """
        C{sendMessage} sends DATA and the stuffed message; a refused DATA is
        returned as it is.
        """
        conn = SMTPTestConnection(ESMTPHandler)
        self.assertEqual(conn.sendMessage(b"x").code, 503)
        conn.command("EHLO c.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.net>")
        self.assertEqual(conn.sendMessage(b".hidden\r\n").code, 250)

    def test_closed(self) -> None:
        """
        C{closed} follows the connection; C{close} drops it from the client
        side and calls DISCONNECT.
        """
        calls: list[str] = []

        class Handler(ESMTPHandler):
            def DISCONNECT(self) -> None:
                calls.append("DISCONNECT")

        conn = SMTPTestConnection(Handler)
        self.assertFalse(conn.closed)
        conn.close()
        self.assertTrue(conn.closed)
        conn.close()
        self.assertEqual(calls, ["DISCONNECT"])

    def test_options(self) -> None:
        """
        Settings overrides, the peer address and the clock are used.
        """
        clock = Clock()
        peer = IPv6Address("TCP", "2001:db8::5", 4000)
        conn = SMTPTestConnection(
            ESMTPHandler, peer=peer, clock=clock, hostname="other.test", idleTimeout=5
        )
        self.assertIs(conn.clock, clock)
        self.assertEqual(conn.session.peerHost, "2001:db8::5")
        self.assertTrue(greetingOf(conn).lines[0].startswith("other.test "))
        self.assertIs(conn.handler.session, conn.session)
        clock.advance(5)
        self.assertEqual(conn.replies()[0].code, 421)

    def test_log(self) -> None:
        """
        The connection's log events are collected, with the session id.
        """
        conn = SMTPTestConnection(ESMTPHandler)
        self.assertIsInstance(conn.log, LogCollector)
        self.assertTrue(conn.log.events)
        self.assertTrue(
            any(e.get("session") == conn.session.id for e in conn.log.events)
        )


class _Socket:
    """
    Takes at most C{limit} bytes per send (everything by default), or
    raises C{error}.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        self.error: OSError | None = None
        self.sent: list[bytes] = []

    def send(self, data: bytes, /) -> int:
        if self.error is not None:
            raise self.error
        taken = data if self.limit is None else data[: self.limit]
        self.sent.append(taken)
        return len(taken)


class DirectSocketTests(SynchronousTestCase):
    """
    With C{directSocket}, replies take the direct path of a plain TCP
    connection: to the socket at the end of the reactor turn, to the
    transport from the first send that did not take everything.
    """

    def test_endOfTurn(self) -> None:
        """
        Replies wait for the end of the turn, then go to the socket in one
        send; C{replies} ends the turn first; C{output} is what the client
        got.
        """
        sock = _Socket()
        conn = SMTPTestConnection(ESMTPHandler, directSocket=sock)
        self.assertEqual(greetingOf(conn).code, 220)
        self.assertTrue(conn.protocol.writer.direct)
        self.assertTrue(conn.transport.getTcpNoDelay())
        self.assertEqual(conn.command("EHLO c.example").code, 250)
        self.assertEqual(len(sock.sent), 2)  # the greeting, the EHLO reply
        conn.send(b"NOOP\r\nNOOP\r\n")
        self.assertEqual(len(sock.sent), 2)
        conn.clock.advance(0)
        self.assertEqual(sock.sent[2], b"250 2.0.0 OK\r\n" * 2)
        self.assertEqual([r.code for r in conn.replies()], [250, 250])
        self.assertEqual(conn.command("NOOP").code, 250)
        self.assertEqual(conn.transport.value(), b"")
        self.assertEqual(conn.output, b"".join(sock.sent))

    def test_fallBack(self) -> None:
        """
        What a short send leaves, and everything after it, goes to the
        transport; so does everything after a failed send.
        """
        greeting = b"220 mx.example.test ESMTP Mail Server\r\n"
        for error in (None, BlockingIOError(), ConnectionResetError()):
            sock = _Socket()
            conn = SMTPTestConnection(ESMTPHandler, directSocket=sock)
            sock.limit, sock.error = 3, error
            self.assertEqual(conn.command("NOOP").code, 250)
            self.assertFalse(conn.protocol.writer.direct)
            sock.limit = sock.error = None
            self.assertEqual(conn.command("RSET").code, 250)
            self.assertEqual(conn.output, greeting + b"250 2.0.0 OK\r\n" * 2)
            self.assertEqual(sock.sent, [greeting] if error else [greeting, b"250"])


class _Thread(ESMTPHandler):
    """
    Defers its EOM's work to a thread with L{esmtpkit.threads}, as Maildir
    does; C{work} raises to fail it.
    """

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.ran: list[int] = []

    def work(self) -> str:
        if self.fail:
            raise OSError("disk on fire")
        self.ran.append(threading.get_ident())
        return "done"

    def EOM(self) -> Deferred[Any]:
        return threads.deferToThread(self.work).addCallback(lambda _: None)


def _envelope(conn: SMTPTestConnection, hello: str = "EHLO") -> None:
    assert conn.command(f"{hello} client.example").code == 250
    assert conn.command("MAIL FROM:<alice@example.org>").code == 250
    assert conn.command("RCPT TO:<bob@example.net>").code == 250


class ThreadWorkTests(SynchronousTestCase):
    """
    What a handler defers to a thread runs inline while the test connection
    drives it, so its reply is there when the call returns.
    """

    def test_maildirWithFsync(self) -> None:
        """
        Maildir with C{fsync=True} (its flush deferred to a thread) delivers
        under L{SMTPTestConnection}: 250, the message in new/, tmp/ empty.
        """
        path = tempDir(self) / "Maildir"
        conn = SMTPTestConnection(lambda: Maildir(str(path), fsync=True))
        _envelope(conn)
        self.assertEqual(conn.sendMessage(b"Subject: hi\r\n\r\nHello\r\n").code, 250)
        [delivered] = maildirFiles(path, "new")
        self.assertEqual(
            splitReceived(delivered.read_bytes())[1], b"Subject: hi\r\n\r\nHello\r\n"
        )
        self.assertEqual(maildirFiles(path, "tmp"), [])

    def test_maildirWithFsyncOverLMTP(self) -> None:
        """
        The same under L{LMTPTestConnection}: one 250 per recipient, and
        a copy for each.
        """
        path = tempDir(self) / "Maildir"
        conn = LMTPTestConnection(lambda: Maildir(str(path), fsync=True))
        _envelope(conn, "LHLO")
        self.assertEqual(conn.command("RCPT TO:<carol@example.net>").code, 250)
        replies = conn.sendMessage(b"Subject: hi\r\n\r\nHello\r\n")
        self.assertEqual([r.code for r in replies], [250, 250])
        self.assertEqual(len(maildirFiles(path, "new")), 2)

    def test_inlineInTheTestThread(self) -> None:
        """
        The work runs in the test's thread, before C{sendMessage} returns.
        """
        conn = SMTPTestConnection(_Thread)
        _envelope(conn)
        self.assertEqual(conn.sendMessage(b"x\r\n").code, 250)
        self.assertEqual(conn.handler.ran, [threading.get_ident()])

    def test_failure(self) -> None:
        """
        Work that raises fails the hook: 451, and the error is logged.
        """
        conn = SMTPTestConnection(lambda: _Thread(fail=True))
        _envelope(conn)
        reply = conn.sendMessage(b"x\r\n")
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        failures = [e["log_failure"] for e in conn.log.events if "log_failure" in e]
        self.assertTrue(any(f.check(OSError) for f in failures))

    def test_onlyWhileDriving(self) -> None:
        """
        Outside the connection's calls the runner is back to the default:
        C{driving()} is a block, not a switch.
        """
        seen: list[Any] = []
        conn = SMTPTestConnection(ESMTPHandler)
        with conn.driving():
            seen.append(threads._local.runner)
        seen.append(getattr(threads._local, "runner", None))
        self.assertEqual(seen, [runInline, None])

    def test_drivingFiresADeferredTheTestHolds(self) -> None:
        """
        A hook that waits on a Deferred the test fires, then defers to a
        thread: fired within C{driving()}, the reply is there at once.
        """
        gate: Deferred[None] = Deferred()

        class Gated(_Thread):
            async def EOM(self) -> None:  # type: ignore[override]
                await gate
                await threads.deferToThread(self.work)

        conn = SMTPTestConnection(Gated)
        _envelope(conn)
        conn.command("DATA")
        conn.send(dotStuff(b"x\r\n"))
        self.assertEqual(conn.replies(), [])
        with conn.driving():
            gate.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250])

    def test_ownClockAdvance(self) -> None:
        """
        The clock the connection made itself runs thread work inline when a
        test advances it directly.
        """

        class Later(_Thread):
            def EOM(self) -> Deferred[Any]:
                later = deferLater(conn.clock, 5, threads.deferToThread, self.work)
                return later.addCallback(lambda _: None)

        conn = SMTPTestConnection(Later)
        _envelope(conn)
        conn.command("DATA")
        conn.send(dotStuff(b"x\r\n"))
        conn.clock.advance(5)
        self.assertEqual([r.code for r in conn.replies()], [250])

    def test_realThreads(self) -> None:
        """
        C{threadRunner} replaces the inline runner.
        """
        calls: list[Any] = []

        def runner(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
            calls.append(f)
            return Deferred()  # a thread that never finishes

        conn = SMTPTestConnection(_Thread, threadRunner=runner)
        _envelope(conn)
        conn.command("DATA")
        conn.send(dotStuff(b"x\r\n"))
        self.assertEqual(calls, [conn.handler.work])
        self.assertEqual(conn.replies(), [])


class _Timers(ESMTPHandler):
    """
    EHLO waits C{delays} seconds, one timer after the other, on C{clock}.
    """

    def __init__(self, clock: Clock, *delays: float) -> None:
        self.clock = clock
        self.delays = delays

    async def EHLO(self, domain: str) -> None:
        for delay in self.delays:
            await deferLater(self.clock, delay, lambda: None)


class AutoAdvanceTests(SynchronousTestCase):
    """
    C{command} and C{sendMessage} advance the clock while the handler waits
    on its own timers, never for the server's timeouts alone, and within
    bounds.
    """

    def test_handlerTimers(self) -> None:
        """
        A hook that waits on two timers in a row is answered; the clock has
        moved on by their sum.
        """
        clock = Clock()
        conn = SMTPTestConnection(lambda: _Timers(clock, 10, 5), clock=clock)
        self.assertEqual(conn.command("EHLO client.example").code, 250)
        self.assertEqual(clock.seconds(), 15)

    def test_notForTheServerTimeouts(self) -> None:
        """
        A hook that waits on something only the test can fire is not
        answered by advancing to the hook timeout: C{command} raises, and
        the clock has not moved.
        """
        d: Deferred[None] = Deferred()

        class Waits(ESMTPHandler):
            def NOOP(self) -> Deferred[None]:
                return d

        conn = SMTPTestConnection(Waits, hookTimeout=5)
        self.assertRaises(AssertionError, conn.command, "NOOP")
        self.assertEqual(conn.clock.seconds(), 0)
        conn.clock.advance(5)
        self.assertEqual([r.code for r in conn.replies()], [451])

    def test_handlerTimerPastTheHookTimeout(self) -> None:
        """
        A handler timer due after the hook timeout: the timeout comes first,
        as on a real server (451 at 5 s).
        """
        clock = Clock()
        conn = SMTPTestConnection(
            lambda: _Timers(clock, 100), clock=clock, hookTimeout=5
        )
        reply = conn.command("EHLO client.example")
        self.assertEqual(reply.code, 451)
        self.assertEqual(clock.seconds(), 5)

    def test_bounded(self) -> None:
        """
        A handler that keeps a timer pending for ever (a looping call) with
        no hook timeout: advancing stops at L{autoAdvanceSteps}; C{command}
        raises.
        """
        clock = Clock()
        loop = LoopingCall(lambda: None)
        loop.clock = clock
        loop.start(1)
        self.addCleanup(loop.stop)
        pending: list[Deferred[None]] = []

        class Waits(ESMTPHandler):
            def NOOP(self) -> Deferred[None]:
                pending.append(Deferred())
                return pending[-1]

        conn = SMTPTestConnection(Waits, clock=clock, hookTimeout=0, idleTimeout=3600)
        conn.command("EHLO client.example")
        conn.autoAdvanceSteps = 50
        self.assertRaises(AssertionError, conn.command, "NOOP")
        self.assertEqual(clock.seconds(), 50)
        conn.autoAdvanceSteps, conn.autoAdvanceLimit = 10**6, 30
        pending[0].callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertRaises(AssertionError, conn.command, "NOOP")
        self.assertEqual(clock.seconds(), 80)

    def test_sendMessage(self) -> None:
        """
        C{sendMessage} advances the clock through an EOM's timers too, for
        SMTP and for LMTP (until every recipient has its reply).
        """
        clock = Clock()

        class Slow(ESMTPHandler):
            def EOM(self) -> Deferred[None]:
                return deferLater(clock, 30, lambda: None)

        smtp = SMTPTestConnection(Slow, clock=clock)
        _envelope(smtp)
        self.assertEqual(smtp.sendMessage(b"x\r\n").code, 250)
        self.assertEqual(clock.seconds(), 30)
        lmtp = LMTPTestConnection(Slow, clock=clock)
        _envelope(lmtp, "LHLO")
        self.assertEqual(lmtp.command("RCPT TO:<carol@example.net>").code, 250)
        self.assertEqual([r.code for r in lmtp.sendMessage(b"x\r\n")], [250, 250])
        self.assertEqual(clock.seconds(), 60)


class _Gatekeeper(ESMTPHandler):
    def MAIL(self, sender: str, params: Any) -> Any:
        return (550, "5.7.1 Not you") if sender == "spammer@example.com" else None

    def RCPT(self, recipient: str, params: Any) -> Any:
        return (550, "5.1.1 No such user") if recipient.startswith("x") else None


class SendMailTests(SynchronousTestCase):
    """
    C{sendMail} runs a whole transaction, greeting first if needed.
    """

    def test_whole(self) -> None:
        """
        EHLO once, then MAIL, RCPT, DATA and the message; the end of data's
        reply is returned; a refused recipient among accepted ones is
        skipped.
        """
        conn = SMTPTestConnection(_Gatekeeper)
        for _ in range(2):
            reply = conn.sendMail("a@example.org", ["x@example.org", "b@ex.org"], b"x")
            self.assertEqual(reply.code, 250)
        self.assertEqual(conn.session.heloName, "client.example")
        self.assertTrue(conn.session.esmtp)
        self.assertEqual(conn.session.messages, 2)

    def test_refusals(self) -> None:
        """
        A refused MAIL is returned; so is the last refusal when no
        recipient was accepted, and the transaction is reset.
        """
        conn = SMTPTestConnection(_Gatekeeper)
        self.assertEqual(
            conn.sendMail("spammer@example.com", "b@ex.org", b"x").code, 550
        )
        reply = conn.sendMail("a@example.org", ["x1@ex.org", "x2@ex.org"], b"x")
        self.assertEqual((reply.code, reply.enhanced), (550, "5.1.1"))
        self.assertIsNone(conn.session.transaction)
        self.assertEqual(conn.sendMail("a@example.org", "b@ex.org", b"x").code, 250)

    def test_lmtp(self) -> None:
        """
        Under LMTP: LHLO, and one reply per accepted recipient.
        """
        conn = LMTPTestConnection(_Gatekeeper)
        replies = conn.sendMail(
            "a@example.org", ["b@ex.org", "x@ex.org", "c@ex.org"], b"x"
        )
        self.assertEqual([r.code for r in replies], [250, 250])
        self.assertEqual(conn.session.heloName, "client.example")
        self.assertEqual(
            [r.code for r in conn.sendMail("spammer@example.com", "b@ex.org", b"x")],
            [550],
        )
