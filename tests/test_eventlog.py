"""
Tests for the log lines an operator reads (L{esmtpkit.core.eventlog}): at
C{info}, one line per refusal with the session, client, HELO name, sender,
recipient and reply, whatever refused (a hook, a limit, a protocol
violation); one line per message accepted listing its recipients.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler, Reply
from esmtpkit.testing import LMTPTestConnection, SMTPTestConnection

MESSAGE = b"Subject: log\r\n\r\nsecret body text\r\n"


class Refusing(ESMTPHandler):
    """
    Refuses the sender C{bad@example.org}, the recipient
    C{nobody@example.org}, DATA when the sender is C{nodata@example.org}, and
    the message at its end when the sender is C{spam@example.org}.
    """

    def MAIL(self, sender: str, params: Any) -> Any:
        if sender == "bad@example.org":
            return Reply(552, "Sender refused", enhanced="5.7.1")
        return None

    def RCPT(self, recipient: str, params: Any) -> Any:
        if recipient == "nobody@example.org":
            return Reply(550, "No such user here", enhanced="5.1.1")
        return None

    def DATA(self) -> Any:
        if self.session.transaction.sender == "nodata@example.org":
            return Reply(451, "Try DATA later", enhanced="4.3.0")
        return None

    def EOM(self) -> Any:
        if self.session.transaction.sender == "spam@example.org":
            return Reply(550, "Looks like spam", enhanced="5.7.1")
        return None


def rejects(conn: SMTPTestConnection) -> list[dict[str, Any]]:
    return [e for e in conn.log.events if e.get("event") == "reject"]


def infoLines(conn: SMTPTestConnection) -> list[str]:
    return [formatEvent(e) for e in conn.log.events if e["log_level"] >= LogLevel.info]


class RefusalLineTests(SynchronousTestCase):
    """
    Each refusal is one C{reject} line with what an operator needs.
    """

    def connect(self, **settings: Any) -> SMTPTestConnection:
        conn = SMTPTestConnection(Refusing, **settings)
        self.assertEqual(conn.command("EHLO client.example").code, 250)
        return conn

    def assertOneReject(self, conn: SMTPTestConnection, **fields: Any) -> str:
        """
        Exactly one reject event, with C{fields} and the session's own;
        return its text.
        """
        [event] = rejects(conn)
        expected = {
            "session": conn.session.id,
            "client": "192.0.2.1",
            "helo": "client.example",
            **fields,
        }
        self.assertEqual({key: event.get(key) for key in expected}, expected)
        self.assertEqual(event["log_level"], LogLevel.info)
        return formatEvent(event)

    def test_mail(self) -> None:
        """
        A sender refused by MAIL: the sender is the one refused.
        """
        conn = self.connect()
        self.assertEqual(conn.command("MAIL FROM:<bad@example.org> SIZE=10").code, 552)
        text = self.assertOneReject(
            conn,
            command="MAIL",
            sender="bad@example.org",
            recipients=[],
            code=552,
            enhanced="5.7.1",
            text="Sender refused",
            limit=None,
        )
        self.assertEqual(
            text,
            f"session {conn.session.id} reject: MAIL from 192.0.2.1: "
            "552 5.7.1 Sender refused; from=<bad@example.org> to=<> "
            "helo=<client.example>",
        )

    def test_rcpt(self) -> None:
        """
        A recipient refused by RCPT: the sender of the transaction and the
        recipient refused, as Postfix writes them.
        """
        conn = self.connect()
        conn.command("MAIL FROM:<alice@example.com>")
        self.assertEqual(conn.command("RCPT TO:<nobody@example.org>").code, 550)
        text = self.assertOneReject(
            conn,
            command="RCPT",
            sender="alice@example.com",
            recipients=["nobody@example.org"],
            code=550,
        )
        self.assertIn(
            "reject: RCPT from 192.0.2.1: 550 5.1.1 No such user here; "
            "from=<alice@example.com> to=<nobody@example.org> helo=<client.example>",
            text,
        )

    def test_data(self) -> None:
        """
        DATA refused: the transaction's sender and recipients.
        """
        conn = self.connect()
        conn.command("MAIL FROM:<nodata@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        self.assertEqual(conn.command("DATA").code, 451)
        self.assertOneReject(
            conn,
            command="DATA",
            sender="nodata@example.org",
            recipients=["b@example.org"],
            code=451,
        )

    def test_dataSequence(self) -> None:
        """
        A refusal esmtpkit makes itself (DATA before RCPT) is logged too.
        """
        conn = self.connect()
        conn.command("MAIL FROM:<a@example.org>")
        self.assertEqual(conn.command("DATA").code, 503)
        self.assertOneReject(conn, command="DATA", code=503, sender="a@example.org")

    def test_endOfMessage(self) -> None:
        """
        A message refused by EOM: one line, with the transaction id, sender
        and every recipient; no message line.
        """
        conn = self.connect()
        conn.command("MAIL FROM:<spam@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        conn.command("RCPT TO:<c@example.org>")
        self.assertEqual(conn.sendMessage(MESSAGE).code, 550)
        self.assertOneReject(
            conn,
            command="EOM",
            transaction=f"{conn.session.id}.1",
            sender="spam@example.org",
            recipients=["b@example.org", "c@example.org"],
            code=550,
            text="Looks like spam",
        )
        self.assertEqual(
            [e for e in conn.log.events if e.get("event") == "message"], []
        )

    def test_recipientLimit(self) -> None:
        """
        A limit makes one line: the refusal, with the limit's name and
        detail (not a separate limit line).
        """
        conn = self.connect(maxRecipients=1)
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        self.assertEqual(conn.command("RCPT TO:<c@example.org>").code, 452)
        text = self.assertOneReject(
            conn,
            command="RCPT",
            recipients=["c@example.org"],
            code=452,
            limit="recipients",
            detail="sent too many recipients",
        )
        self.assertTrue(text.endswith("limit=recipients (sent too many recipients)"))
        self.assertFalse([e for e in conn.log.events if e.get("event") == "limit"])

    def test_messageSizeLimit(self) -> None:
        """
        A message over the size limit: one refusal line for its end, with
        the limit, sender and recipients.
        """
        conn = self.connect(maxMessageSize=10)
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        self.assertEqual(conn.sendMessage(MESSAGE).code, 552)
        self.assertOneReject(
            conn,
            command="EOM",
            sender="a@example.org",
            recipients=["b@example.org"],
            code=552,
            limit="message-size",
        )

    def test_protocolViolation(self) -> None:
        """
        Pipelining without PIPELINING: one line with the sync limit and the
        violation.
        """
        conn = SMTPTestConnection(Refusing)
        conn.command("HELO client.example")
        conn.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
        self.assertEqual(conn.replies()[-1].code, 554)
        self.assertOneReject(
            conn,
            command="MAIL",
            code=554,
            limit="sync",
            detail="protocol violation: input pipelined after MAIL",
        )

    def test_helo(self) -> None:
        """
        A HELO refused names the domain the client gave.
        """
        conn = SMTPTestConnection(Refusing)
        self.assertEqual(conn.command("HELO " + "a" * 300).code, 501)
        [event] = rejects(conn)
        self.assertEqual((event["command"], event["code"]), ("HELO", 501))
        self.assertTrue(event["helo"].startswith("a" * 256))
        self.assertLess(len(event["helo"]), 300)

    def test_hostileText(self) -> None:
        """
        Client-supplied text in a line is escaped: no control characters or
        undecodable bytes reach the log.
        """
        conn = self.connect()
        conn.send(b"MAIL FROM:<bad\x01@example.org\xff>\r\n")
        [event] = rejects(conn)
        line = formatEvent(event)
        self.assertTrue(line.isprintable(), line)
        line.encode("utf-8")

    def test_idleTimeout(self) -> None:
        """
        A timeout after a message: a refusal line naming the limit, although
        the last command was the end of a message.
        """
        conn = self.connect(idleTimeout=10)
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        self.assertEqual(conn.sendMessage(MESSAGE).code, 250)
        conn.clock.advance(11)
        [event] = rejects(conn)
        self.assertEqual((event["code"], event["limit"]), (421, "idle-timeout"))

    def test_connectionLimit(self) -> None:
        """
        A connection over a limit: one line, with the limit and the
        client's address.
        """
        conn = SMTPTestConnection(Refusing, maxConnections=1)
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", "192.0.2.9", 1)
        )
        extra = conn.factory.buildProtocol(None)
        transport.protocol = extra
        extra.makeConnection(transport)
        [event] = rejects(conn)
        self.assertEqual(
            (event["command"], event["code"], event["limit"], event["client"]),
            ("CONNECT", 421, "connections", "192.0.2.9"),
        )

    def test_acceptedOneLine(self) -> None:
        """
        A message accepted: one line at info listing its recipients, with
        its size and transaction id; never its body.
        """
        conn = self.connect()
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        conn.command("RCPT TO:<nobody@example.org>")
        conn.command("RCPT TO:<c@example.org>")
        self.assertEqual(conn.sendMessage(MESSAGE).code, 250)
        [event] = [e for e in conn.log.events if e.get("event") == "message"]
        self.assertEqual(event["recipients"], ["b@example.org", "c@example.org"])
        self.assertEqual(event["size"], len(MESSAGE))
        self.assertEqual(event["transaction"], f"{conn.session.id}.1")
        self.assertIn("to=<b@example.org>,<c@example.org> size=", formatEvent(event))
        for line in infoLines(conn):
            self.assertNotIn("secret body", line)

    def test_quietAtWarn(self) -> None:
        """
        At warn, refusals write nothing and leave nothing kept per session.
        """
        conn = self.connect(logLevel=LogLevel.warn, maxRecipients=1)
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        self.assertEqual(conn.command("RCPT TO:<c@example.org>").code, 452)
        self.assertEqual(conn.log.events, [])
        [observer] = conn.protocol.server.events.observers
        self.assertEqual(observer._pending, {})


class LMTPLineTests(SynchronousTestCase):
    """
    Under LMTP, a message some recipients refused is one line with each
    recipient's code.
    """

    def test_partial(self) -> None:
        from esmtpkit import PerRecipient

        class Some(ESMTPHandler):
            def EOM(self) -> Any:
                return PerRecipient(
                    [None, Reply(452, "Mailbox full", enhanced="4.2.2")]
                )

        conn = LMTPTestConnection(Some)
        conn.command("LHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        conn.command("RCPT TO:<c@example.org>")
        conn.sendMessage(MESSAGE)
        [event] = [e for e in conn.log.events if e.get("event") == "message"]
        self.assertEqual(
            (event["verdict"], event["code"], event["recipients"]),
            ("partial", "250,452", ["b@example.org", "c@example.org"]),
        )
        self.assertEqual(rejects(conn), [])


class MilterFaceTests(SynchronousTestCase):
    """
    The milter face tells the same refusals: a recipient the handler
    refuses, asked by an MTA, is one reject line with sender and recipient.
    """

    def test_rcptRefused(self) -> None:
        from esmtpkit.milter import wire

        from .miltertools import FakeMTA

        mta = FakeMTA(Refusing)
        mta.start()
        mta.command(wire.MAIL, "<alice@example.com>")
        answered = mta.command(wire.RCPT, "<nobody@example.org>")
        self.assertEqual(answered[0][0], wire.REPLYCODE)
        [event] = [e for e in mta.log.events if e.get("event") == "reject"]
        self.assertEqual(
            (event["command"], event["code"], event["sender"], event["recipients"]),
            ("RCPT", 550, "alice@example.com", ["nobody@example.org"]),
        )
        self.assertEqual(event["helo"], "client.example")
