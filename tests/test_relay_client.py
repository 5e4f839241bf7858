"""
Unit tests of the relay's parts without sockets: L{SMTPClient} over an
in-memory transport and a fake clock (replies, timeouts, flow control,
bad input), L{DotStuffer} (also as a property: unstuffing what it wrote
gives the message back, however it is cut into chunks), the parameters
passed upstream, the upstream configuration, and the relay's
C{--handler-option}s.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from zope.interface.verify import verifyClass, verifyObject

from esmtpkit import Reply
from esmtpkit.handlers import Relay
from esmtpkit.handlers.options import handlerFactory
from esmtpkit.handlers.relay.client import (
    DotStuffer,
    SMTPClient,
    UpstreamLost,
    UpstreamProtocolError,
    UpstreamTimeout,
    parseExtensions,
)
from esmtpkit.handlers.relay.upstream import (
    UpstreamConfig,
    UpstreamDown,
    UpstreamSession,
    errorReply,
    mailParameters,
    rcptParameters,
    xtextEncode,
)
from esmtpkit.interfaces import IESMTPHandler
from esmtpkit.server.startup import StartupError
from esmtpkit.session import Params

from .helpers import twistdExecutable


def connected(greetingTimeout: float = 5) -> tuple[SMTPClient, Any, Clock]:
    clock = Clock()
    client = SMTPClient(clock, greetingTimeout)
    transport = StringTransportWithDisconnection()
    transport.protocol = client
    client.makeConnection(transport)
    return client, transport, clock


def result(deferred: Any) -> Any:
    out: list[Any] = []
    deferred.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_greetingAndCommand() -> None:
    """
    The greeting, then a command written with CRLF and its multi-line
    reply, the enhanced code taken out of each line.
    """
    client, transport, clock = connected()
    verifyObject(IPushProducer, client)
    client.dataReceived(b"220 up.test ESMTP\r\n")
    assert result(client.greeting) == Reply(220, "up.test ESMTP")
    deferred = client.command("EHLO relay.test", 10)
    assert transport.value() == b"EHLO relay.test\r\n"
    assert not deferred.called
    client.dataReceived(b"250-up.test\r\n250-SIZE 1000\r\n250 8bitmime\r\n")
    reply = result(deferred)
    assert reply.lines == ("up.test", "SIZE 1000", "8bitmime")
    assert parseExtensions(reply) == {"SIZE": "1000", "8BITMIME": ""}
    second = client.command("RCPT TO:<b@x>", 10)
    client.dataReceived(b"550-5.1.1 no such\r\n550 5.1.1 user\r\n")
    assert result(second) == Reply(550, "no such", "user", enhanced="5.1.1")
    assert clock.getDelayedCalls() == []


def test_repliesInOrderAcrossReads() -> None:
    """
    Two replies in one read and one cut across reads go to their commands
    in order.
    """
    client, transport, clock = connected()
    client.dataReceived(b"220 hi\r\n")
    first, second, third = (client.command(c, 10) for c in ("A", "B", "C"))
    client.dataReceived(b"250 one\r\n251 two\r\n25")
    assert result(first).code == 250 and result(second).code == 251
    assert not third.called
    client.dataReceived(b"2 three\r\n")
    assert result(third).lines == ("three",)


def test_commandTimeout() -> None:
    """
    No reply in time: L{UpstreamTimeout}, and the connection is dropped.
    """
    client, transport, clock = connected()
    client.dataReceived(b"220 hi\r\n")
    deferred = client.command("MAIL FROM:<a@b>", 2)
    clock.advance(1.9)
    assert not deferred.called
    clock.advance(0.2)
    failure = result(deferred)
    assert isinstance(failure, Failure) and failure.check(UpstreamTimeout)
    assert transport.disconnecting or transport.disconnected


def test_greetingTimeout() -> None:
    client, transport, clock = connected(greetingTimeout=3)
    clock.advance(3)
    assert result(client.greeting).check(UpstreamTimeout)


@pytest.mark.parametrize(
    "data",
    [b"hello\r\n", b"25\r\n", b"250-a\r\n251 b\r\n", b"099 odd\r\n", b"250x\r\n"],
)
def test_notAReply(data: bytes) -> None:
    """
    Output that is not an SMTP reply fails the command with
    L{UpstreamProtocolError} and drops the connection.
    """
    client, transport, clock = connected()
    client.dataReceived(b"220 hi\r\n")
    deferred = client.command("NOOP", 10)
    client.dataReceived(data)
    assert result(deferred).check(UpstreamProtocolError)
    assert transport.disconnecting or transport.disconnected


def test_lineTooLong() -> None:
    client, transport, clock = connected()
    client.dataReceived(b"220 hi\r\n")
    deferred = client.command("NOOP", 10)
    client.dataReceived(b"250 " + b"x" * 5000)
    assert result(deferred).check(UpstreamProtocolError)


def test_tooManyLines() -> None:
    client, transport, clock = connected()
    client.dataReceived(b"220 hi\r\n")
    deferred = client.command("EHLO x", 10)
    client.dataReceived(b"250-x\r\n" * 101)
    assert result(deferred).check(UpstreamProtocolError)


def test_connectionLostFailsWaiting() -> None:
    """
    The connection lost: every waiting command fails with L{UpstreamLost},
    and later commands fail at once.
    """
    client, transport, clock = connected()
    client.dataReceived(b"220 hi\r\n")
    first, second = client.command("A", 10), client.command("B", 10)
    transport.loseConnection()
    assert result(first).check(UpstreamLost)
    assert result(second).check(UpstreamLost)
    assert result(client.command("C", 10)).check(UpstreamLost)
    assert clock.getDelayedCalls() == []


def test_cancelDropsConnection() -> None:
    client, transport, clock = connected()
    client.dataReceived(b"220 hi\r\n")
    deferred = client.command("DATA", 10)
    deferred.cancel()
    result(deferred)  # failed with CancelledError, consumed here
    assert transport.disconnecting or transport.disconnected


def test_unaskedReplyIgnored() -> None:
    """
    A reply nobody waits for (a 421 before the upstream closes) is dropped,
    not given to the next command.
    """
    client, transport, clock = connected()
    client.dataReceived(b"220 hi\r\n421 going away\r\n")
    deferred = client.command("NOOP", 10)
    assert not deferred.called
    client.dataReceived(b"250 ok\r\n")
    assert result(deferred).code == 250


def test_writeBodyFlowControl() -> None:
    """
    While the transport takes more, L{SMTPClient.writeBody} returns
    L{None}; once it asked its producer to pause, a Deferred that fires at
    resume -- or fails after the data timeout.
    """
    client, transport, clock = connected()
    assert transport.producer is client
    assert client.writeBody(b"abc", 5) is None
    client.pauseProducing()
    waiting = client.writeBody(b"def", 5)
    assert waiting is not None and not waiting.called
    assert transport.value().endswith(b"abcdef")
    client.resumeProducing()
    assert result(waiting) is None
    client.pauseProducing()
    stalled = client.writeBody(b"ghi", 5)
    assert stalled is not None
    clock.advance(5)
    assert result(stalled).check(UpstreamTimeout)
    assert transport.disconnecting or transport.disconnected


def test_writeBodyLost() -> None:
    client, transport, clock = connected()
    client.pauseProducing()
    waiting = client.writeBody(b"x", 5)
    transport.loseConnection()
    assert result(waiting).check(UpstreamLost)


def unstuff(wire: bytes) -> bytes:
    """
    What a server reads from DATA bytes: dot-stuffing undone, up to the
    terminator (which must be there, at the end).
    """
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    lines = wire[:-3].split(b"\r\n")
    body = [line[1:] if line.startswith(b".") else line for line in lines]
    return b"\r\n".join(body)


@pytest.mark.parametrize(
    "chunks, wire",
    [
        ([b""], b".\r\n"),
        ([b".x\r\n"], b"..x\r\n.\r\n"),
        ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b"\n.", b"\r\n"], b"a\r\n..\r\n.\r\n"),
        ([b"no end"], b"no end\r\n.\r\n"),
        ([b"a\r\n.\r\n"], b"a\r\n..\r\n.\r\n"),
        ([b"x.\r\n.."], b"x.\r\n...\r\n.\r\n"),
    ],
)
def test_dotStuffer(chunks: list[bytes], wire: bytes) -> None:
    stuffer = DotStuffer()
    assert b"".join(stuffer.stuff(c) for c in chunks) + stuffer.end() == wire


@given(
    st.lists(
        st.sampled_from([b".", b"\r\n", b"\r", b"a", b"..", b"\r\n."]), max_size=30
    ),
    st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_dotStufferRoundTrip(pieces: list[bytes], cuts: list[int]) -> None:
    """
    However a message of CRLF lines is cut into chunks, what a server reads
    back is the message, with a line ending added if it had none; the
    terminator appears only at the end.
    """
    message = b"".join(pieces).replace(b"\r\n", b"\n").replace(b"\r", b"")
    message = message.replace(b"\n", b"\r\n")
    points = sorted({min(c, len(message)) for c in cuts})
    ends = [*points, len(message)]
    chunks = [message[a:b] for a, b in zip([0, *points], ends, strict=True)]
    stuffer = DotStuffer()
    wire = b"".join(stuffer.stuff(c) for c in chunks) + stuffer.end()
    expected = (
        message if message.endswith(b"\r\n") or not message else message + b"\r\n"
    )
    assert unstuff(wire) == expected
    assert wire.find(b"\r\n.\r\n") in (len(wire) - 5, -1)


def session(*keywords: str, encrypted: bool = False) -> UpstreamSession:
    client = SMTPClient(Clock(), 1)
    return UpstreamSession(client, {k: "" for k in keywords}, encrypted=encrypted)


def params(**values: str | None) -> Params:
    return Params(values)


def test_mailParametersOffered() -> None:
    """
    What the upstream offers is passed on (ENVID xtext-encoded again); the
    rest is dropped.
    """
    given = params(SIZE="10", BODY="8BITMIME", RET="FULL", ENVID="a+b c")
    full = session("SIZE", "8BITMIME", "DSN")
    assert (
        mailParameters(given, full) == " SIZE=10 BODY=8BITMIME RET=FULL ENVID=a+2Bb+20c"
    )
    assert mailParameters(given, session()) == ""


@pytest.mark.parametrize(
    "values, code",
    [
        ({"SMTPUTF8": None}, 553),
        ({"BODY": "BINARYMIME"}, 555),
        ({"REQUIRETLS": None}, 550),
    ],
)
def test_mailParametersRefused(values: dict[str, str | None], code: int) -> None:
    """
    A parameter the upstream must understand and does not refuses MAIL.
    """
    from esmtpkit.reply import ReplyError

    with pytest.raises(ReplyError) as caught:
        mailParameters(params(**values), session("8BITMIME"))
    assert caught.value.reply.code == code


def test_rcptParameters() -> None:
    given = params(NOTIFY="SUCCESS,FAILURE", ORCPT="rfc822;b+x@example.org")
    assert rcptParameters(given, session("DSN")) == (
        " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.org"
    )
    assert rcptParameters(given, session()) == ""


def test_xtext() -> None:
    assert xtextEncode("a=b+c\u20ac") == "a+3Db+2Bc+E2+82+AC"


def test_errorReplies() -> None:
    """
    Every upstream failure is a 451 with its enhanced code.
    """
    assert errorReply(UpstreamDown("x")).enhanced == "4.4.1"
    assert errorReply(UpstreamTimeout("x")).enhanced == "4.4.2"
    assert errorReply(UpstreamLost("x")).enhanced == "4.4.2"
    assert {errorReply(UpstreamProtocolError("x")).code} == {451}


@pytest.mark.parametrize(
    "keywords, problem",
    [
        ({"tls": "sometimes"}, "tls"),
        ({"port": 0}, "port"),
        ({"user": "u"}, "user and password"),
        ({"commandTimeout": -1}, "commandTimeout"),
        ({"tls": "required", "caFile": "/nonexistent/ca.pem"}, "caFile"),
    ],
)
def test_configChecked(keywords: dict[str, Any], problem: str) -> None:
    arguments: dict[str, Any] = {"host": "mx.test", "port": 25, **keywords}
    with pytest.raises(ValueError, match=problem):
        UpstreamConfig(**arguments)


def test_relayDefaults() -> None:
    relay = Relay("mx.test")
    verifyClass(IESMTPHandler, Relay)
    assert (relay.config.port, relay.config.tls) == (25, "opportunistic")
    assert Relay("mx.test", lmtp=True).config.port == 24


def test_handlerOptions(tmp_path: Any) -> None:
    """
    C{--handler-option}s make the upstream configuration once; the factory
    makes relays that share it.
    """
    secret = tmp_path / "secret"
    secret.write_text("pw\n")
    factory = handlerFactory(
        "esmtpkit.handlers.Relay",
        [
            "host=mx.test",
            "tls=off",
            "lmtp",
            "user=relay",
            f"password-file={secret}",
            "data-timeout=7.5",
            "no-received",
        ],
    )
    first, second = factory(), factory()
    assert first.config is second.config
    config = first.config
    assert (config.host, config.port, config.tls, config.lmtp) == (
        "mx.test",
        24,
        "off",
        True,
    )
    assert (config.user, config.password, config.dataTimeout) == ("relay", "pw", 7.5)
    assert first.received is False


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["tls=maybe"], "tls: 'maybe' is not one of required, opportunistic, off"),
        (["port=http"], "port: 'http' is not a whole number"),
        (["user=relay"], "user and password-file go together"),
        (["password-file=/nonexistent/pw", "user=u"], "password-file: No such file"),
        (["verbose"], "unknown handler option 'verbose'"),
    ],
)
def test_badHandlerOption(pairs: list[str], message: str) -> None:
    with pytest.raises(StartupError) as caught:
        handlerFactory("esmtpkit.handlers.Relay", pairs)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("esmtpkit: --handler esmtpkit.handlers.Relay: ")
    assert message in text, text


def twistd(*args: str, cwd: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [twistdExecutable(), "-n", "--pidfile=", "esmtpkit", *args],
        cwd=cwd,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=60,
    )


def test_twistdHelpAndBadValue(tmp_path: Any) -> None:
    """
    C{--help} lists the relay's options with their defaults; a bad value is
    one line on standard error and exit status 1, before anything listens.
    """
    relay = ("--handler", "esmtpkit.handlers.Relay")
    shown = twistd(*relay, "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Options of esmtpkit.handlers.Relay" in shown.stdout
    assert "tls=VALUE" in shown.stdout and "[default: opportunistic]" in shown.stdout
    bad = twistd(
        *relay,
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--handler-option",
        "tls=maybe",
        cwd=tmp_path,
    )
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        "esmtpkit: --handler esmtpkit.handlers.Relay: tls: 'maybe' is not one of "
        "required, opportunistic, off"
    ], bad.stderr
