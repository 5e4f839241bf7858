"""
The Message handler applying modifications: a L{Chain} C{[Modifier,
Message]} over L{SMTPTestConnection}; C{handle_message} gets the message
as a parse of what L{ModifiedMessage} renders (the same headers, raw
values included, and the same bytes), with the modified envelope, whether
the modifier declares C{mayModify} (the body is spooled and parsed at EOM)
or not (the streamed parse is edited).
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from esmtpkit.handlers import Chain, Message
from esmtpkit.testing import SMTPTestConnection

from .modifyhelpers import (
    MESSAGE,
    MODIFIED,
    NEW_BODY,
    NEW_RECIPIENTS,
    NEW_SENDER,
    RECIPIENTS,
    SENDER,
    Modifier,
    headersOnly,
    rendered,
)


def parsed(data: bytes) -> EmailMessage:
    return BytesParser(policy=email.policy.default).parsebytes(data)  # type: ignore[return-value]


class ContentType(Modifier):
    """
    Changes the Content-Type header only.
    """

    def EOM(self) -> Any:
        changes = self.session.transaction.modifications
        changes.changeHeader("Content-Type", "text/html; charset=utf-8")


def deliver(filter: type[Modifier], what: str, declared: bool) -> tuple[Any, ...]:
    got: list[Any] = []

    class Filter(filter):  # type: ignore[valid-type,misc]
        mayModify = declared

    Filter.what = what

    def handle(message: EmailMessage, envelope: Any) -> None:
        got.append((message, envelope))

    conn = SMTPTestConnection(Chain.factory([Filter, lambda: Message(handle)]))
    assert conn.command("EHLO client.test").code == 250
    assert conn.command(f"MAIL FROM:<{SENDER}>").code == 250
    for address in RECIPIENTS:
        assert conn.command(f"RCPT TO:<{address}>").code == 250
    reply = conn.sendMessage(MESSAGE)
    conn.close()
    return reply, got


def assertSameMessage(message: EmailMessage, expected: bytes) -> None:
    model = parsed(expected)
    assert list(message.raw_items()) == list(model.raw_items())
    assert message.as_bytes() == model.as_bytes()


@pytest.mark.parametrize("declared", [True, False])
def test_everyModification(declared: bool) -> None:
    """
    Headers, body and envelope changed: the message is the parse of the
    rendered one, the envelope the modified one.
    """
    Modifier.rendered = []
    reply, [(message, envelope)] = deliver(Modifier, "all", declared)
    assert reply.code == 250
    assertSameMessage(message, MODIFIED)
    assertSameMessage(message, rendered(None))
    assert message["Subject"] == "[changed] a subject\tover two lines"
    assert "X-Secret" not in message
    assert message.get_payload(decode=True) == NEW_BODY
    assert envelope.sender == NEW_SENDER
    assert tuple(r.address for r in envelope.recipients) == NEW_RECIPIENTS
    assert envelope.quarantine is None


@pytest.mark.parametrize("declared", [True, False])
def test_headersOnly(declared: bool) -> None:
    """
    Header changes alone: the new header section over the body received;
    the envelope is the client's.
    """
    Modifier.rendered = []
    reply, [(message, envelope)] = deliver(Modifier, "headers", declared)
    assert reply.code == 250
    assertSameMessage(message, headersOnly(MESSAGE))
    assert next(message.raw_items()) == ("X-Top", "first")
    assert dict(message.raw_items())["X-Keep"] == "spaced  "
    assert envelope.sender == SENDER
    assert tuple(r.address for r in envelope.recipients) == RECIPIENTS


def test_quarantine() -> None:
    """
    A quarantine reaches C{handle_message} in the envelope; the message is
    the one received.
    """
    reply, [(message, envelope)] = deliver(Modifier, "quarantine", True)
    assert reply.code == 250
    assertSameMessage(message, MESSAGE)
    assert envelope.quarantine == "looks like spam"


def test_structureDeclared() -> None:
    """
    A Content-Type change from a declared modifier: the body is parsed
    under the new header.
    """
    reply, [(message, _)] = deliver(ContentType, "all", True)
    assert reply.code == 250
    assert message.get_content_type() == "text/html"
    expected = MESSAGE.replace(
        b"X-Keep:   spaced  \r\n",
        b"X-Keep:   spaced  \r\nContent-Type: text/html; charset=utf-8\r\n",
    )
    assertSameMessage(message, expected)


def test_structureUndeclared() -> None:
    """
    A Content-Type change from a modifier that did not declare
    C{mayModify}: the streamed parse cannot follow it: 451 4.3.0, and
    C{handle_message} is not called.
    """
    reply, got = deliver(ContentType, "all", False)
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert got == []
