"""
Helpers for the tests of delivering handlers that apply modifications
(Relay, Webhook, Message): L{Modifier}, a chain member that asks at EOM for
every kind of change, the message it changes and what it must become.
"""

from __future__ import annotations

import io
from typing import Any

from esmtpkit import ESMTPHandler, ModifiedMessage
from esmtpkit.reply import HookResult
from esmtpkit.session import Params

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: a folded\r\n"
    b" subject\r\n"
    b"X-Secret: internal\r\n"
    b"X-Keep:   spaced  \r\n"
    b"\r\n"
    b"Old body.\r\n"
    b".a dotted line\r\n"
)

NEW_BODY = b"New body.\r\n.a new dotted line\r\n\xe2\x82\xac 8-bit\r\n"

MODIFIED = (
    b"X-Top: first\r\n"
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: [changed] a subject\r\n\tover two lines\r\n"
    b"X-Keep:   spaced  \r\n"
    b"X-Added: yes\r\n"
    b"\r\n" + NEW_BODY
)
"""L{MESSAGE} as L{Modifier} changes it."""

SENDER = "alice@sender.test"
RECIPIENTS = ("bob@example.org", "carol@example.org")
NEW_SENDER = "bounces@changed.test"
NEW_RECIPIENTS = ("carol@example.org", "dave@example.org")


class Modifier(ESMTPHandler):
    """
    A filter that declares C{mayModify} and at EOM adds, inserts, changes
    and deletes headers, replaces the body (a file), changes the sender,
    deletes bob and adds dave; it keeps the L{ModifiedMessage} it asked
    for in C{rendered} (class-wide list: one per message).

    @cvar what: C{"all"}, C{"headers"} (header changes only),
        C{"quarantine"} or C{"nothing"}.
    """

    mayModify = True
    what = "all"
    rendered: list[ModifiedMessage] = []

    def EOM(self) -> HookResult:
        transaction = self.session.transaction
        assert transaction is not None
        changes = transaction.modifications
        if self.what == "nothing":
            return None
        if self.what == "quarantine":
            changes.quarantineMessage("looks like spam")
            return None
        changes.addHeader("X-Added", "yes")
        changes.insertHeader(0, "X-Top", "first")
        changes.changeHeader("Subject", "[changed] a subject\n\tover two lines")
        changes.deleteHeader("X-Secret")
        if self.what == "all":
            changes.replaceBody(io.BytesIO(NEW_BODY))
            changes.changeSender(NEW_SENDER, Params())
            changes.deleteRecipient("BOB@example.org")
            changes.addRecipient("dave@example.org")
        self.rendered.append(ModifiedMessage(transaction))
        return None


def headersOnly(message: bytes) -> bytes:
    """
    C{message} with L{Modifier}'s header changes only (what C{"headers"}
    makes of it).
    """
    head, body = message.split(b"\r\n\r\n", 1)
    return MODIFIED.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body


def rendered(body: Any) -> bytes:
    """
    What the last L{Modifier} message renders to with C{body} as the body
    received (the replacement, if any, is L{NEW_BODY}).
    """
    message = Modifier.rendered[-1]
    if message.replacement is not None:
        body = NEW_BODY
    return message.headerSection + body
