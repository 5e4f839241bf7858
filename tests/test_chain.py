"""
L{Chain}: several handlers in order per hook, with L{SMTPTestConnection}
(synchronous, Deferred and C{async def} members, on the connection's fake
clock) and over a real loopback socket with smtplib; and C{--handler
a.X,b.Y} with per-member C{--handler-option}.
"""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from esmtpkit import NO_OPINION, ESMTPFactory, ESMTPHandler, IESMTPHandler
from esmtpkit.core.results import PerRecipient
from esmtpkit.handlers import Chain, Maildir, Sink
from esmtpkit.handlers.views import MemberSession
from esmtpkit.server.startup import StartupError
from esmtpkit.server.tap import Options
from esmtpkit.session import Session
from esmtpkit.testing import LMTPTestConnection, SMTPTestConnection

from .helpers import LOOPBACK, maildirFiles, tempDir, waitUntil

reactor: Any = _reactor
MESSAGE = b"Subject: hello\r\nFrom: a@example.org\r\n\r\nline one\r\nline two\r\n"


class Recorder(ESMTPHandler):
    """
    Records every hook call in a shared log as C{(name, hook)}; answers
    with C{answers[hook]} when given (a value, or a callable of the args).
    """

    def __init__(self, name: str, log: list[Any], **answers: Any) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.answers = answers

    def _answer(self, hook: str, *args: Any) -> Any:
        self.log.append((self.name, hook))
        answer = self.answers.get(hook)
        return answer(self, *args) if callable(answer) else answer

    def CONNECT(self) -> Any:
        return self._answer("CONNECT")

    def MAIL(self, sender: str, params: Any) -> Any:
        return self._answer("MAIL", sender)

    def RCPT(self, recipient: str, params: Any) -> Any:
        return self._answer("RCPT", recipient)

    def DATA(self) -> Any:
        return self._answer("DATA")

    def HEADER(self, name: str, value: str) -> Any:
        return self._answer("HEADER", name, value)

    def BODY(self, chunk: bytes) -> Any:
        return self._answer("BODY", chunk)

    def EOM(self) -> Any:
        return self._answer("EOM")

    def ABORT(self) -> Any:
        return self._answer("ABORT")

    def VRFY(self, address: str) -> Any:
        return self._answer("VRFY", address)

    def DISCONNECT(self) -> Any:
        return self._answer("DISCONNECT")


def transaction(conn: SMTPTestConnection, recipients: int = 1) -> None:
    assert conn.command("EHLO client.example").code == 250
    assert conn.command("MAIL FROM:<a@example.org>").code == 250
    for index in range(recipients):
        assert conn.command(f"RCPT TO:<r{index}@example.org>").code == 250


def calls(log: list[Any], hook: str) -> list[str]:
    return [name for name, called in log if called == hook]


def test_providesInterface() -> None:
    chain = Chain([Sink(), Sink()])
    chain.session = Session()
    chain.disconnect = False
    assert verifyObject(IESMTPHandler, chain)
    assert all(isinstance(h.session, MemberSession) for h in chain.handlers)
    with pytest.raises(TypeError):
        Chain([Sink(), object()])
    with pytest.raises(ValueError):
        Chain([])


def test_noOpinionAloneIsDefault() -> None:
    class Shrug(ESMTPHandler):
        def MAIL(self, sender: str, params: Any) -> Any:
            return NO_OPINION

    conn = SMTPTestConnection(Shrug)
    conn.command("EHLO c")
    reply = conn.command("MAIL FROM:<a@example.org>")
    assert (reply.code, reply.text) == (250, "<a@example.org>, sender ok")


def test_everyHandlerSeesContentAndEOM() -> None:
    log: list[Any] = []
    conn = SMTPTestConnection(
        lambda: Chain([Recorder("a", log), Recorder("b", log), Recorder("c", log)])
    )
    transaction(conn)
    reply = conn.sendMessage(MESSAGE)
    assert reply.code == 250 and reply.text.startswith("Message accepted")
    assert calls(log, "HEADER") == ["a", "b", "c"] * 2
    assert calls(log, "BODY") == ["a", "b", "c"]
    assert calls(log, "EOM") == ["a", "b", "c"]
    assert calls(log, "MAIL") == ["a", "b", "c"]
    assert calls(log, "ABORT") == []


def test_refusalMidChain() -> None:
    """
    A refusal at RCPT decides: the client gets it, the handler after the
    one that refused is not asked.
    """
    log: list[Any] = []
    refuse = {
        "RCPT": lambda self, r: (
            (550, "5.1.1 No such user") if r.startswith("x") else None
        )
    }
    conn = SMTPTestConnection(
        lambda: Chain(
            [Recorder("a", log), Recorder("b", log, **refuse), Recorder("c", log)]
        )
    )
    conn.command("EHLO c")
    conn.command("MAIL FROM:<a@example.org>")
    reply = conn.command("RCPT TO:<x@example.org>")
    assert (reply.code, reply.enhanced, reply.text) == (550, "5.1.1", "No such user")
    assert calls(log, "RCPT") == ["a", "b"]
    assert conn.command("RCPT TO:<ok@example.org>").code == 250
    assert calls(log, "RCPT") == ["a", "b", "a", "b", "c"]


def test_noOpinionPassesOn() -> None:
    log: list[Any] = []
    conn = SMTPTestConnection(
        lambda: Chain(
            [
                Recorder("a", log, VRFY=NO_OPINION),
                Recorder("b", log, VRFY=None),
                Recorder("c", log, VRFY=(250, "2.1.5 <c> is known")),
                Recorder("d", log, VRFY=(550, "never asked")),
            ]
        )
    )
    reply = conn.command("VRFY c")
    assert (reply.code, reply.text) == (250, "<c> is known")
    # An answer hook: the first opinion decides.
    assert calls(log, "VRFY") == ["a", "b", "c"]


def test_allNoOpinionIsDefault() -> None:
    log: list[Any] = []
    conn = SMTPTestConnection(
        lambda: Chain([Recorder("a", log, VRFY=NO_OPINION), Recorder("b", log)])
    )
    reply = conn.command("VRFY somebody")
    assert reply.code == 252 and reply.enhanced == "2.5.0"


def test_explicitAcceptanceAtEOMDoesNotSkipTheDeliverer(tmp_path: Path) -> None:
    """
    A filter answering 250 at EOM explicitly: the delivering handler after
    it still gets EOM (the message is in the Maildir), and its reply is
    the one sent.
    """
    log: list[Any] = []
    box = tmp_path / "box"
    conn = SMTPTestConnection(
        lambda: Chain(
            [
                Recorder("filter", log, EOM=(250, "2.0.0 looks fine")),
                Maildir(str(box), fsync=False),
            ]
        )
    )
    transaction(conn)
    reply = conn.sendMessage(MESSAGE)
    assert reply.code == 250 and reply.text.startswith("Message accepted for delivery")
    assert len(maildirFiles(box, "new")) == 1


def test_refusalAtEOMAbortsTheRest(tmp_path: Path) -> None:
    """
    A refusal at EOM decides; the handlers after it got no EOM and get
    ABORT (a Maildir after the filter leaves no file in tmp/ or new/).
    """
    log: list[Any] = []
    box = tmp_path / "box"
    conn = SMTPTestConnection(
        lambda: Chain(
            [
                Recorder("filter", log, EOM=(554, "5.7.1 Spam")),
                Maildir(str(box), fsync=False),
                Recorder("last", log),
            ]
        )
    )
    transaction(conn)
    reply = conn.sendMessage(MESSAGE)
    assert (reply.code, reply.text) == (554, "Spam")
    assert calls(log, "EOM") == ["filter"]
    assert calls(log, "ABORT") == ["last"]
    assert maildirFiles(box, "new") == [] and maildirFiles(box, "tmp") == []


def test_failureAtEOM() -> None:
    log: list[Any] = []

    def boom(self: Any) -> Any:
        raise RuntimeError("broken filter")

    conn = SMTPTestConnection(
        lambda: Chain([Recorder("a", log, EOM=boom), Recorder("b", log)])
    )
    transaction(conn)
    reply = conn.sendMessage(MESSAGE)
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert calls(log, "EOM") == ["a"] and calls(log, "ABORT") == ["b"]


def test_mailRefusalAbortsEarlierAcceptors() -> None:
    log: list[Any] = []
    conn = SMTPTestConnection(
        lambda: Chain(
            [
                Recorder("relay", log, MAIL=(250, "2.1.0 ok upstream")),
                Recorder("policy", log, MAIL=(550, "5.7.1 Not you")),
            ]
        )
    )
    conn.command("EHLO c")
    assert conn.command("MAIL FROM:<a@example.org>").code == 550
    assert calls(log, "ABORT") == ["relay"]


def test_refusalInBodyStopsLaterHandlers() -> None:
    """
    A content hook that refuses: the handlers after it do not see the
    chunk, every handler gets ABORT, the client gets the refusal.
    """
    from esmtpkit import ReplyError

    log: list[Any] = []

    def refuse(self: Any, chunk: bytes) -> None:
        raise ReplyError(550, "5.6.0 Bad body")

    conn = SMTPTestConnection(
        lambda: Chain([Recorder("a", log, BODY=refuse), Recorder("b", log)])
    )
    transaction(conn)
    reply = conn.sendMessage(MESSAGE)
    assert (reply.code, reply.text) == (550, "Bad body")
    assert calls(log, "BODY") == ["a"]
    assert calls(log, "ABORT") == ["a", "b"]
    assert calls(log, "EOM") == []


def test_abortAndDisconnectReachEveryHandler() -> None:
    log: list[Any] = []

    def boom(self: Any) -> None:
        raise RuntimeError("cleanup failed")

    conn = SMTPTestConnection(
        lambda: Chain(
            [Recorder("a", log, ABORT=boom, DISCONNECT=boom), Recorder("b", log)]
        )
    )
    transaction(conn)
    assert conn.command("RSET").code == 250
    assert calls(log, "ABORT") == ["a", "b"]
    conn.command("QUIT")
    conn.protocol.connectionLost(None)
    assert calls(log, "DISCONNECT") == ["a", "b"]
    failures = [e for e in conn.log.events if e.get("log_failure") is not None]
    assert len(failures) == 2  # both logged, neither stopped the other


def test_perInstanceSkip() -> None:
    """
    A chain of handlers without content hooks leaves them skipped (the
    chain's class has them all); one member with BODY makes BODY called,
    for that member only.
    """
    conn = SMTPTestConnection(lambda: Chain([Sink(), Sink()]))
    assert conn.protocol.conversation.skippable == {"HEADER", "EOH", "BODY"}

    log: list[Any] = []
    conn = SMTPTestConnection(lambda: Chain([Sink(), Recorder("r", log)]))
    assert conn.protocol.conversation.skippable == {"EOH"}
    transaction(conn)
    assert conn.sendMessage(MESSAGE).code == 250
    assert calls(log, "BODY") == ["r"]


def test_sessionViews() -> None:
    """
    Each member has its own session.data, transaction.data and disconnect;
    everything else is the connection's; modifications are shared.
    """
    seen: dict[str, Any] = {}

    class First(ESMTPHandler):
        def MAIL(self, sender: str, params: Any) -> Any:
            self.session.data["who"] = "first"
            self.session.transaction.data["n"] = 1
            return None

        def EOM(self) -> Any:
            self.session.transaction.modifications.addHeader("X-First", "yes")
            return None

    class Second(ESMTPHandler):
        def MAIL(self, sender: str, params: Any) -> Any:
            seen["data"] = dict(self.session.data)
            seen["tdata"] = dict(self.session.transaction.data)
            seen["sender"] = self.session.transaction.sender
            seen["helo"] = self.session.heloName
            return None

        def EOM(self) -> Any:
            seen["mods"] = list(self.session.transaction.modifications.headers)
            self.disconnect = True
            return None

    conn = SMTPTestConnection(lambda: Chain([First(), Second()]))
    transaction(conn)
    assert conn.sendMessage(MESSAGE).code == 250
    assert seen["data"] == {} and seen["tdata"] == {}
    assert seen["sender"] == "a@example.org" and seen["helo"] == "client.example"
    assert len(seen["mods"]) == 1 and "X-First" in repr(seen["mods"][0])
    first, second = conn.handler.handlers
    assert first.session.data == {"who": "first"}
    assert conn.session.data == {}
    assert not first.disconnect and second.disconnect
    assert conn.closed  # the chain disconnects when any member asked to


def test_perRecipientMerged() -> None:
    conn = LMTPTestConnection(
        lambda: Chain(
            [
                Recorder("a", [], EOM=PerRecipient([None, (452, "4.2.2 Full"), None])),
                Recorder("b", [], EOM=PerRecipient([(550, "5.1.1 Gone"), None, None])),
            ]
        )
    )
    conn.command("LHLO c")
    conn.command("MAIL FROM:<a@example.org>")
    for index in range(3):
        conn.command(f"RCPT TO:<r{index}@example.org>")
    replies = conn.sendMessage(MESSAGE)
    assert [r.code for r in replies] == [550, 452, 250]


def test_deferredAndAsyncMembers() -> None:
    """
    A member answering with a Deferred (fired on the fake clock) and one
    with a coroutine: the chain waits for each in turn, in order.
    """
    log: list[Any] = []
    clock = Clock()

    def later(answer: Any) -> Any:
        return lambda self, *args: deferLater(clock, 1, lambda: answer)

    async def asyncNone(self: Any, *args: Any) -> None:
        await deferLater(clock, 1, lambda: None)
        log.append(("async", "done"))

    conn = SMTPTestConnection(
        lambda: Chain(
            [
                Recorder("d", log, RCPT=later(None), EOM=later((250, "2.0.0 d"))),
                Recorder("a", log, RCPT=asyncNone, EOM=later(None)),
                Recorder("refuser", log, RCPT=later((450, "4.2.1 Later"))),
            ]
        ),
        clock=clock,
    )
    conn.command("EHLO c")
    conn.command("MAIL FROM:<a@example.org>")
    conn.send(b"RCPT TO:<x@example.org>\r\n")
    assert conn.replies() == []
    assert calls(log, "RCPT") == ["d"]
    clock.advance(1)
    assert calls(log, "RCPT") == ["d", "a"]
    clock.advance(1)
    clock.advance(1)
    [reply] = conn.replies()
    assert (reply.code, reply.text) == (450, "Later")
    assert ("async", "done") in log


def test_deferredEOMCancelledByTimeout() -> None:
    """
    The whole chain is one hook against the hook timeout: a member whose
    EOM never answers is cancelled, the client gets 451, the next member
    gets no EOM (only ABORT, from the conversation).
    """
    log: list[Any] = []
    cancelled: list[bool] = []

    def forever(self: Any) -> Deferred[Any]:
        return Deferred(lambda d: cancelled.append(True))

    conn = SMTPTestConnection(
        lambda: Chain([Recorder("slow", log, EOM=forever), Recorder("b", log)]),
        hookTimeout=5,
    )
    transaction(conn)
    conn.command("DATA")
    conn.send(MESSAGE + b".\r\n")
    assert conn.replies() == []
    conn.clock.advance(5)
    [reply] = conn.replies()
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert cancelled == [True]
    assert calls(log, "EOM") == ["slow"]


def test_handlerOptionChain(tmp_path: Path) -> None:
    """
    --handler a.X,b.Y builds a chain; options go to the handler that
    declares them, or to the one named before the dot.
    """
    options = Options()
    options.parseOptions(
        [
            "--handler",
            "tests.optionhandlers.Filter,tests.optionhandlers.Archive",
            "--handler-option",
            "word=viagra",
            "--handler-option",
            "Archive.folder=/srv/x",
            "--handler-option",
            "2.compress",
            "--port",
            "tcp:0:interface=127.0.0.1",
        ]
    )
    chain = options["handlerFactory"]()
    assert isinstance(chain, Chain)
    first, second = chain.handlers
    assert first.word == "viagra"
    assert (second.folder, second.compress) == ("/srv/x", True)
    conn = SMTPTestConnection(options["handlerFactory"])
    transaction(conn)
    reply = conn.sendMessage(b"Subject: cheap viagra\r\n\r\nbuy\r\n")
    assert (reply.code, reply.text) == (550, "No viagra")
    transaction_ok = conn.command("MAIL FROM:<a@example.org>")
    assert transaction_ok.code == 250


@pytest.mark.parametrize(
    "pair, message",
    [
        ("Nobody.word=x", "'Nobody' names no handler"),
        ("colour=x", "no handler of the chain declares it"),
    ],
)
def test_handlerOptionChainErrors(pair: str, message: str) -> None:
    with pytest.raises(StartupError) as raised:
        Options().parseOptions(
            [
                "--handler",
                "tests.optionhandlers.Filter,tests.optionhandlers.Archive",
                "--handler-option",
                pair,
                "--port",
                "tcp:0:interface=127.0.0.1",
            ]
        )
    assert message in raised.value.message


class ChainSocketTests(TestCase):
    """
    A chain (a refusing filter, then Maildir with fsync) served on a real
    loopback socket to smtplib.
    """

    timeout = 60

    async def test_overRealSocket(self) -> None:
        box = tempDir(self) / "box"

        class SpamFilter(ESMTPHandler):
            def HEADER(self, name: str, value: str) -> None:
                if name == "Subject" and "spam" in value:
                    self.session.transaction.data["spam"] = True

            async def EOM(self) -> Any:
                if self.session.transaction.data.get("spam"):
                    return (550, "5.7.1 Spam refused")
                return (250, "2.0.0 filter ok")

        factory = ESMTPFactory(
            lambda: Chain([SpamFilter(), Maildir(str(box))]), hostname="mx.test"
        )
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        def client() -> tuple[Any, Any]:
            with smtplib.SMTP(LOOPBACK, number, timeout=30) as smtp:
                good = smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
                try:
                    smtp.sendmail(
                        "a@example.org",
                        ["b@example.org"],
                        b"Subject: spam\r\n\r\nx\r\n",
                    )
                    bad: Any = None
                except smtplib.SMTPDataError as e:
                    bad = (e.smtp_code, e.smtp_error)
            return good, bad

        good, bad = await deferToThread(client)
        self.assertEqual(good, {})
        self.assertEqual(bad, (550, b"5.7.1 Spam refused"))
        self.assertEqual(len(maildirFiles(box, "new")), 1)
        self.assertEqual(maildirFiles(box, "tmp"), [])
        await ensureDeferred(waitUntil(lambda: not factory.connections))


def test_chainClassWithHandlersOption(tmp_path: Path) -> None:
    box = tmp_path / "box"
    argv = ["--port", "tcp:0:interface=127.0.0.1", "--maildir", str(box)]
    options = Options()
    options.parseOptions(
        [
            "--handler",
            "esmtpkit.handlers.Chain",
            "--handler-option",
            "handlers=tests.optionhandlers.Filter,esmtpkit.handlers.Maildir",
            *argv,
        ]
    )
    chain = options["handlerFactory"]()
    assert [type(h).__name__ for h in chain.handlers] == ["Filter", "Maildir"]
    single = Options()
    single.parseOptions(
        [
            "--handler",
            "esmtpkit.handlers.Chain",
            "--handler-option",
            "handlers=esmtpkit.handlers.Sink",
            *argv,
        ]
    )
    assert [type(h) for h in single["handlerFactory"]().handlers] == [Sink]
    with pytest.raises(StartupError) as raised:
        Options().parseOptions(["--handler", "esmtpkit.handlers.Chain", *argv])
    assert "handlers=a.X,b.Y is required" in raised.value.message


def test_deferredBodyHoldsTheNextMember() -> None:
    """
    A member whose BODY returns a Deferred holds the chain (and the
    input): the next member gets the chunk only once it fired.
    """
    log: list[Any] = []
    pending: list[Deferred[None]] = []

    def slow(self: Any, chunk: bytes) -> Deferred[None]:
        pending.append(Deferred())
        return pending[-1]

    conn = SMTPTestConnection(
        lambda: Chain([Recorder("slow", log, BODY=slow), Recorder("next", log)])
    )
    transaction(conn)
    conn.command("DATA")
    conn.send(MESSAGE + b".\r\n")
    assert calls(log, "BODY") == ["slow"]
    assert conn.replies() == []
    pending[0].callback(None)
    assert calls(log, "BODY") == ["slow", "next"]
    [reply] = conn.replies()
    assert reply.code == 250


def test_nestedChain() -> None:
    log: list[Any] = []
    inner = lambda: Chain([Recorder("i1", log), Recorder("i2", log)])  # noqa: E731
    conn = SMTPTestConnection(lambda: Chain([Recorder("o", log), inner()]))
    transaction(conn)
    assert conn.sendMessage(MESSAGE).code == 250
    assert calls(log, "EOM") == ["o", "i1", "i2"]
    assert calls(log, "BODY") == ["o", "i1", "i2"]
