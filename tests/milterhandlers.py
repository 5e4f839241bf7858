"""
Handlers that tests run as milters (C{twistd esmtpkit --handler
tests.milterhandlers.NAME -p milter:...}), and a probe for a milter's
readiness.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from esmtpkit import ESMTPHandler
from esmtpkit.milter import wire
from esmtpkit.reply import HookResult, ReplyError
from esmtpkit.session import Params

from .helpers import LOOPBACK

REFUSED_RECIPIENT = "nobody@example.org"
BUSY_SENDER = "busy@sender.test"
DELETED_RECIPIENT = "dave@example.org"
ADDED_RECIPIENT = "carol@example.org"
NEW_SENDER = "changed@sender.test"
NEW_BODY = b"The milter replaced this body.\r\nSecond line.\r\n"


class PolicyMilter(ESMTPHandler):
    """
    Refuses L{REFUSED_RECIPIENT} at RCPT, tempfails DATA for
    L{BUSY_SENDER}, refuses a Subject containing "forbidden" at HEADER; at
    EOM adds headers (one telling what the session saw), inserts one at the
    top, changes the Subject, replaces the body, changes the sender, adds
    L{ADDED_RECIPIENT} and deletes L{DELETED_RECIPIENT}.
    """

    def RCPT(self, recipient: str, params: Params) -> HookResult:
        if recipient.lower() == REFUSED_RECIPIENT:
            return (550, "5.1.1 No such user here (100% sure)")
        return None

    def DATA(self) -> HookResult:
        transaction = self.session.transaction
        assert transaction is not None
        if transaction.sender.lower() == BUSY_SENDER:
            return (451, "4.3.2 Busy sender, try later")
        return None

    def HEADER(self, name: str, value: str) -> HookResult:
        if name.lower() == "subject" and "forbidden" in value.lower():
            raise ReplyError(554, "5.7.1 Subject refused by policy")
        return None

    def EOM(self) -> HookResult:
        session = self.session
        transaction = session.transaction
        assert transaction is not None
        changes = transaction.modifications
        recipients = ",".join(r.address for r in transaction.recipients)
        changes.addHeader(
            "X-Milter-Session",
            f"helo={session.heloName} peer={session.peerHost} id={transaction.id}"
            f" from={transaction.sender} to={recipients}"
            f" headers={','.join(name for name, _ in transaction.headers)}"
            f" raw={len(transaction.rawHeaders)}",
        )
        changes.addHeader("X-Milter", "esmtpkit")
        changes.insertHeader(0, "X-Milter-Top", "first")
        changes.changeHeader("Subject", "changed by the milter")
        changes.replaceBody(NEW_BODY)
        changes.changeSender(NEW_SENDER)
        changes.addRecipient(ADDED_RECIPIENT)
        changes.deleteRecipient(DELETED_RECIPIENT)
        return None


class HeaderEOMMilter(ESMTPHandler):
    """
    The benchmark's milter: looks at every header, adds one at EOM.
    """

    __slots__ = ("subject",)

    def HEADER(self, name: str, value: str) -> HookResult:
        if name.lower() == "subject":
            self.subject = value
        return None

    def EOM(self) -> HookResult:
        transaction = self.session.transaction
        assert transaction is not None
        transaction.modifications.addHeader("X-Bench", "seen")
        return None


def probeMilter(port: int, timeout: float = 2.0) -> bool:
    """
    Whether a milter on 127.0.0.1:C{port} answers option negotiation.
    """
    offer = struct.pack("!III", 6, wire.SMFIF_ALL, 0x1FFFFF)
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(wire.packet(wire.OPTNEG, offer))
            reader = wire.PacketReader()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = sock.recv(4096)
                if not data:
                    return False
                for command, _ in reader.feed(data):
                    return command == wire.OPTNEG
    except OSError:
        return False
    return False


def waitForMilter(port: int, timeout: float = 20.0, process: Any = None) -> None:
    """
    Wait until a milter answers on C{port}.
    """
    deadline = time.monotonic() + timeout
    while not probeMilter(port, 1.0):
        if process is not None and process.poll() is not None:
            raise AssertionError(f"milter process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no milter on port {port} within {timeout}s")
        time.sleep(0.05)


class Rewriter(ESMTPHandler):
    """
    The same modifications whatever the face: run stand-alone in front of
    Maildir (C{--handler tests.milterhandlers.Rewriter,esmtpkit.handlers.Maildir})
    and as a milter inside Postfix, it must leave the same message in the
    Maildir. At EOM: a header added, one inserted at the top and one after
    the second header, the Subject changed, the second C{X-Tag} deleted, the
    body replaced, the sender changed, a recipient added and one deleted.
    """

    def EOM(self) -> HookResult:
        transaction = self.session.transaction
        assert transaction is not None
        changes = transaction.modifications
        changes.addHeader("X-Added", "at the end")
        changes.insertHeader(0, "X-Top", "first of all")
        changes.insertHeader(2, "X-Third", "after two")
        changes.changeHeader("Subject", "rewritten")
        changes.deleteHeader("X-Tag", 2)
        changes.changeHeader("X-Folded", "one\r\n\ttwo")
        changes.replaceBody([b"New body, line one.\r\n", b".dot line\r\n", b"end\r\n"])
        changes.changeSender(NEW_SENDER)
        changes.addRecipient(ADDED_RECIPIENT)
        changes.deleteRecipient(DELETED_RECIPIENT)
        return None
