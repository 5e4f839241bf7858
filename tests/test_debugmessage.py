"""
The L{Debug} and L{Message} handlers, with L{SMTPTestConnection}, and
selected through C{twistd esmtpkit}'s options.
"""

from __future__ import annotations

import io
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from esmtpkit import IESMTPHandler
from esmtpkit.handlers import Chain, Debug, Maildir, Message
from esmtpkit.handlers.message import Envelope
from esmtpkit.server.startup import StartupError
from esmtpkit.server.tap import Options
from esmtpkit.testing import SMTPTestConnection

from .helpers import maildirFiles

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= time\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob,\r\nsee you at 5.\r\n"
)


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions([*argv, "--port", "tcp:0:interface=127.0.0.1"])
    return options


def send(conn: SMTPTestConnection, message: bytes = MESSAGE, rcpts: int = 1) -> Any:
    conn.command("EHLO client.example")
    conn.command("MAIL FROM:<alice@example.org> BODY=8BITMIME")
    for index in range(rcpts):
        conn.command(f"RCPT TO:<bob{index}@example.net>")
    return conn.sendMessage(message)


# -- Debug --------------------------------------------------------------------


def test_debugPrintsTheConversation() -> None:
    out = io.StringIO()
    conn = SMTPTestConnection(lambda: Debug(out))
    assert verifyObject(IESMTPHandler, conn.handler)
    reply = send(conn, MESSAGE + b"x" * 200_000 + b"\r\n")
    assert reply.code == 250
    conn.command("QUIT")
    conn.protocol.connectionLost(None)
    text = out.getvalue()
    sid = conn.session.id
    lines = text.splitlines()
    assert all(line.startswith(f"[{sid}] ") for line in lines)
    assert "SMTP connection from 192.0.2.1:49152 to 127.0.0.1:25" in text
    assert "EHLO client.example" in text
    assert "MAIL FROM:<alice@example.org> [BODY=8BITMIME]" in text
    assert "RCPT TO:<bob0@example.net>" in text
    assert "  Subject: =?utf-8?q?caf=C3=A9?= time" in text  # as sent
    assert "  From: Alice <alice@example.org>" in text
    body = len(b"Hello Bob,\r\nsee you at 5.\r\n") + 200_002
    assert f"end of message: {len(MESSAGE) + 200_002} bytes, body {body} bytes" in text
    # The body's size as it streams: several chunks, counted up.
    assert sum(1 for line in lines if "body:" in line) >= 3
    assert f"({body} so far)" in text
    assert "QUIT" in text and "disconnected after 1 message(s)" in text


def test_debugEscapesControlCharacters() -> None:
    out = io.StringIO()
    conn = SMTPTestConnection(lambda: Debug(out))
    send(conn, b"Subject: a\x1b[31mred\r\n\r\nx\r\n")
    assert "Subject: a\\x1b[31mred" in out.getvalue()
    assert "\x1b" not in out.getvalue()


def test_debugOptionOutputFile(tmp_path: Path) -> None:
    path = tmp_path / "debug.log"
    options = parse(
        "--handler", "esmtpkit.handlers.Debug", "--handler-option", f"output={path}"
    )
    send(SMTPTestConnection(options["handlerFactory"]))
    assert "RCPT TO:<bob0@example.net>" in path.read_text()
    with pytest.raises(StartupError) as raised:
        parse(
            "--handler",
            "esmtpkit.handlers.Debug",
            "--handler-option",
            f"output={tmp_path}/missing/x",
        )
    assert f"{tmp_path}/missing/x: No such file or directory" in raised.value.message


def test_debugInChainHasNoOpinion(tmp_path: Path) -> None:
    out = io.StringIO()
    box = tmp_path / "box"
    conn = SMTPTestConnection(
        lambda: Chain([Debug(out), Maildir(str(box), fsync=False)])
    )
    assert send(conn).code == 250
    assert len(maildirFiles(box, "new")) == 1
    assert "end of message" in out.getvalue()


# -- Message ------------------------------------------------------------------


class Tickets(Message):
    def __init__(self, seen: list[Any], answer: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen = seen
        self.answer = answer

    def handle_message(self, message: EmailMessage, envelope: Envelope) -> Any:
        self.seen.append((message, envelope))
        return self.answer


def test_messageParsed() -> None:
    seen: list[Any] = []
    conn = SMTPTestConnection(lambda: Tickets(seen))
    reply = send(conn, rcpts=2)
    assert reply.code == 250
    [(message, envelope)] = seen
    assert isinstance(message, EmailMessage)
    assert message["subject"] == "café time"
    assert message["from"].addresses[0].addr_spec == "alice@example.org"
    # The body as received: CRLF line endings.
    assert message.get_content() == "Hello Bob,\r\nsee you at 5.\r\n"
    assert envelope.sender == "alice@example.org"
    assert envelope.mailParams == {"BODY": "8BITMIME"}
    assert [r.address for r in envelope.recipients] == [
        "bob0@example.net",
        "bob1@example.net",
    ]
    assert envelope.clientAddress == "192.0.2.1" and envelope.clientPort == 49152
    assert envelope.heloName == "client.example"
    assert envelope.tls is None and envelope.authenticated is None
    assert envelope.transactionId == conn.session.id + ".1"
    assert envelope.size == len(MESSAGE)


@pytest.mark.parametrize(
    "answer, code",
    [(None, 250), ((554, "5.7.1 No tickets today"), 554), ((451, "4.3.0 Busy"), 451)],
)
def test_messageResultIsTheReply(answer: Any, code: int) -> None:
    conn = SMTPTestConnection(lambda: Tickets([], answer))
    assert send(conn).code == code


def test_messageDeferredAndAsync() -> None:
    pending: list[Deferred[Any]] = []

    def later(message: EmailMessage, envelope: Envelope) -> Deferred[Any]:
        pending.append(Deferred())
        return pending[-1]

    conn = SMTPTestConnection(lambda: Message(handle_message=later))
    conn.command("EHLO c")
    conn.command("MAIL FROM:<a@example.org>")
    conn.command("RCPT TO:<b@example.org>")
    conn.command("DATA")
    conn.send(MESSAGE + b".\r\n")
    assert conn.replies() == []
    pending[0].callback((250, "2.0.0 Ticket 42"))
    [reply] = conn.replies()
    assert (reply.code, reply.text) == (250, "Ticket 42")

    async def coroutine(message: EmailMessage, envelope: Envelope) -> Any:
        return (250, f"2.0.0 {message['subject']}")

    conn = SMTPTestConnection(lambda: Message(handle_message=coroutine))
    assert send(conn).text == "café time"


def test_messageFailureIs451() -> None:
    def broken(message: EmailMessage, envelope: Envelope) -> Any:
        raise RuntimeError("database down")

    conn = SMTPTestConnection(lambda: Message(handle_message=broken))
    reply = send(conn)
    assert (reply.code, reply.enhanced) == (451, "4.3.0")


def test_messageMaxSize() -> None:
    seen: list[Any] = []
    conn = SMTPTestConnection(lambda: Tickets(seen, maxSize=1000))
    reply = send(conn, MESSAGE + b"y" * 5000 + b"\r\n")
    assert (reply.code, reply.enhanced) == (552, "5.3.4")
    assert seen == []
    # The next message, small enough, goes through.
    conn.command("MAIL FROM:<a@example.org>")
    conn.command("RCPT TO:<b@example.org>")
    assert conn.sendMessage(MESSAGE).code == 250
    assert len(seen) == 1


def test_messageBoundedByServerLimit() -> None:
    seen: list[Any] = []
    conn = SMTPTestConnection(lambda: Tickets(seen), maxMessageSize=2000)
    assert send(conn, MESSAGE + b"z" * 5000 + b"\r\n").code == 552
    assert seen == []


received: list[Any] = []


def collect(message: EmailMessage, envelope: Envelope) -> Any:
    received.append(message["subject"])
    return None


def test_messageFunctionOption() -> None:
    options = parse(
        "--handler",
        "esmtpkit.handlers.Message",
        "--handler-option",
        "function=tests.test_debugmessage.collect",
        "--handler-option",
        "max-size=100000",
    )
    received.clear()
    assert send(SMTPTestConnection(options["handlerFactory"])).code == 250
    assert received == ["café time"]
    with pytest.raises(StartupError) as raised:
        parse("--handler", "esmtpkit.handlers.Message")
    assert "needs function=module.name" in raised.value.message
    with pytest.raises(StartupError) as raised:
        parse(
            "--handler",
            "esmtpkit.handlers.Message",
            "--handler-option",
            "function=tests.nomodule.f",
        )
    assert "no module named 'tests.nomodule'" in raised.value.message
