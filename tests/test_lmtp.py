"""
Tests for LMTP (RFC 2033) on the conversation core: L{LMTPProtocol},
L{PerRecipient} and how its results become replies on each wire.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler, PerRecipient, Reply, ReplyError, ServerObserver
from esmtpkit.core.results import MessageResult
from esmtpkit.received import receivedHeader
from esmtpkit.testing import LMTPTestConnection, SMTPTestConnection, dotStuff

MESSAGE = b"Subject: hi\r\nFrom: a@example.org\r\n\r\nHello\r\n"


class PerRecipientHandler(ESMTPHandler):
    """
    EOM answers each recipient by the local part of its address: C{ok...}
    250, C{bad...} 550, C{later...} 451.
    """

    __slots__ = ("seen",)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def EOM(self) -> Any:
        transaction = self.session.transaction
        assert transaction is not None
        self.seen.append(str(transaction.headers))
        replies = []
        for recipient in transaction.recipients:
            local = recipient.address.split("@")[0]
            if local.startswith("bad"):
                replies.append((550, "5.1.1 No such user here"))
            elif local.startswith("later"):
                replies.append(Reply(451, "Mailbox busy", enhanced="4.2.1"))
            else:
                replies.append(None)
        return PerRecipient(replies)


class Recorder(ServerObserver):
    """
    Keeps the transactions' ends and every reply's verb and code.
    """

    def __init__(self) -> None:
        self.ended: list[tuple[str, tuple[int, ...]]] = []
        self.replies: list[tuple[str, int]] = []

    def transactionEnded(
        self, session: Any, transaction: Any, outcome: str, replies: Any
    ) -> None:
        self.ended.append((outcome, tuple(reply.code for reply in replies)))

    def commandReplied(self, session: Any, verb: str, reply: Reply) -> None:
        self.replies.append((verb, reply.code))


def lmtp(handler: Any = PerRecipientHandler, **settings: Any) -> LMTPTestConnection:
    conn = LMTPTestConnection(handler, **settings)
    assert conn.greeting is not None and conn.greeting.code == 220
    return conn


def envelope(conn: SMTPTestConnection, *recipients: str, hello: str = "LHLO") -> None:
    """
    Greet, then MAIL and RCPT for each of C{recipients}; all must be
    accepted.
    """
    assert conn.command(f"{hello} client.example").code == 250
    assert conn.command("MAIL FROM:<sender@example.org>").code == 250
    for recipient in recipients:
        reply = conn.command(f"RCPT TO:<{recipient}>")
        assert reply.code == 250, reply


class GreetingTests(SynchronousTestCase):
    """
    LHLO instead of HELO and EHLO.
    """

    def test_lhloKeywords(self) -> None:
        """
        LHLO is answered like EHLO, with PIPELINING and ENHANCEDSTATUSCODES
        even when the settings turn them off (RFC 2033 requires both), and
        the other extensions that apply.
        """
        conn = lmtp(pipelining=False, enhancedStatusCodes=False)
        reply = conn.command("LHLO client.example")
        self.assertEqual(reply.code, 250)
        keywords = {line.split()[0] for line in reply.lines[1:]}
        for keyword in (
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "SIZE",
            "8BITMIME",
            "SMTPUTF8",
            "CHUNKING",
            "DSN",
        ):
            self.assertIn(keyword, keywords)
        self.assertTrue(reply.lines[0].startswith("mx.example.test "))
        self.assertEqual(conn.session.heloName, "client.example")
        self.assertTrue(conn.session.esmtp)

    def test_heloAndEhloRefused(self) -> None:
        """
        HELO and EHLO are not LMTP commands: 500 5.5.1 naming LHLO, and no
        session starts.
        """
        conn = lmtp()
        for verb in ("HELO", "EHLO"):
            reply = conn.command(f"{verb} client.example")
            self.assertEqual((reply.code, reply.enhanced), (500, "5.5.1"))
            self.assertIn("LHLO", reply.text)
        self.assertIsNone(conn.session.heloName)
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 503)

    def test_lhloOnSMTP(self) -> None:
        """
        LHLO is not an SMTP command.
        """
        conn = SMTPTestConnection(ESMTPHandler)
        self.assertEqual(conn.command("LHLO client.example").code, 500)

    def test_receivedSaysLMTP(self) -> None:
        """
        The trace header names LMTP (RFC 3848).
        """
        conn = lmtp()
        envelope(conn, "ok@example.org")
        transaction = conn.session.transaction
        self.assertEqual(conn.session.withProtocol, "LMTP")
        header = receivedHeader(conn.session, transaction)
        self.assertIn(b"with LMTP", header)

    def test_pipelinedEnvelope(self) -> None:
        """
        The envelope may be pipelined after LHLO (PIPELINING is always on);
        the replies come in order.
        """
        conn = lmtp()
        conn.command("LHLO client.example")
        conn.send(
            b"MAIL FROM:<s@example.org>\r\nRCPT TO:<ok@example.org>\r\n"
            b"RCPT TO:<bad@example.org>\r\nDATA\r\n"
        )
        self.assertEqual([r.code for r in conn.replies()], [250, 250, 250, 354])
        conn.send(dotStuff(MESSAGE))
        self.assertEqual([r.code for r in conn.replies()], [250, 550])


class PerRecipientReplyTests(SynchronousTestCase):
    """
    After the end of data, one reply per accepted recipient, in RCPT order.
    """

    def test_mixed(self) -> None:
        """
        The handler's reply for each recipient, in order, with enhanced
        codes filled in.
        """
        conn = lmtp()
        envelope(conn, "ok1@example.org", "bad@example.org", "later@example.org")
        replies = conn.sendMessage(MESSAGE)
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies],
            [(250, "2.0.0"), (550, "5.1.1"), (451, "4.2.1")],
        )
        self.assertIsNone(conn.session.transaction)
        self.assertEqual(conn.session.messages, 1)
        self.assertFalse(conn.closed)

    def test_sameRecipientTwice(self) -> None:
        """
        A recipient given twice gets a reply each time.
        """
        conn = lmtp()
        envelope(conn, "ok@example.org", "ok@example.org", "bad@example.org")
        self.assertEqual([r.code for r in conn.sendMessage(MESSAGE)], [250, 250, 550])

    def test_singleReplyForAll(self) -> None:
        """
        A handler that gives one reply gives it to every recipient.
        """

        class Refuse(ESMTPHandler):
            def EOM(self) -> Any:
                return (554, "5.6.0 Not for us")

        conn = lmtp(Refuse)
        envelope(conn, "a@example.org", "b@example.org")
        self.assertEqual(
            [(r.code, r.text) for r in conn.sendMessage(MESSAGE)],
            [(554, "Not for us")] * 2,
        )
        self.assertEqual(conn.session.messages, 0)

    def test_defaultHandler(self) -> None:
        """
        Without an EOM of its own, every recipient is accepted.
        """
        conn = lmtp(ESMTPHandler)
        envelope(conn, "a@example.org", "b@example.org", "c@example.org")
        self.assertEqual([r.code for r in conn.sendMessage(MESSAGE)], [250] * 3)

    def test_mapping(self) -> None:
        """
        A mapping by address: a missing address gets C{default}.
        """

        class ByAddress(ESMTPHandler):
            def EOM(self) -> Any:
                return PerRecipient(
                    {"x@example.org": (452, "4.2.2 Over quota")},
                    default=(250, "2.1.5 Delivered"),
                )

        conn = lmtp(ByAddress)
        envelope(conn, "x@example.org", "y@example.org")
        replies = conn.sendMessage(MESSAGE)
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies], [(452, "4.2.2"), (250, "2.1.5")]
        )

    def test_deferredPerRecipient(self) -> None:
        """
        An EOM whose Deferred fires with a L{PerRecipient} works the same.
        """
        pending: list[Deferred[Any]] = []

        class Later(ESMTPHandler):
            def EOM(self) -> Any:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d

        conn = lmtp(Later)
        envelope(conn, "a@example.org", "b@example.org")
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(MESSAGE) + b"NOOP\r\n")
        self.assertEqual(conn.replies(), [])
        pending[0].callback(PerRecipient([None, (550, "5.7.1 No")]))
        self.assertEqual([r.code for r in conn.replies()], [250, 550, 250])

    def test_wrongLength(self) -> None:
        """
        A sequence of the wrong length is a handler bug: every recipient gets
        451 4.3.0 and the failure is logged.
        """

        class Short(ESMTPHandler):
            def EOM(self) -> Any:
                return PerRecipient([None])

        conn = lmtp(Short)
        envelope(conn, "a@example.org", "b@example.org")
        replies = conn.sendMessage(MESSAGE)
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(451, "4.3.0")] * 2)
        self.assertTrue([e for e in conn.log.events if "log_failure" in e])

    def test_perRecipientFromOtherHook(self) -> None:
        """
        Only EOM may answer per recipient; elsewhere it is a bad reply.
        """

        class Odd(ESMTPHandler):
            def NOOP(self) -> Any:
                return PerRecipient([])

        conn = lmtp(Odd)
        self.assertEqual(conn.command("NOOP").code, 451)

    def test_disconnectAfterAllReplies(self) -> None:
        """
        A handler that asks to disconnect at EOM still answers every
        recipient before the connection closes.
        """

        class Bye(PerRecipientHandler):
            def EOM(self) -> Any:
                self.disconnect = True
                return super().EOM()

        conn = lmtp(Bye)
        envelope(conn, "ok@example.org", "bad@example.org")
        self.assertEqual([r.code for r in conn.sendMessage(MESSAGE)], [250, 550])
        self.assertTrue(conn.closed)

    def test_refusalsCountOnce(self) -> None:
        """
        Refusing several recipients of one message is one error against the
        error budget, not one per recipient.
        """
        conn = lmtp(hardErrorLimit=3, softErrorLimit=0)
        envelope(conn, "bad1@example.org", "bad2@example.org", "bad3@example.org")
        self.assertEqual([r.code for r in conn.sendMessage(MESSAGE)], [550] * 3)
        self.assertFalse(conn.closed)
        self.assertEqual(conn.protocol._errors, 1)


class WholeMessageRefusalTests(SynchronousTestCase):
    """
    A message refused as a whole still gets one reply per recipient.
    """

    def test_tooBig(self) -> None:
        """
        Over the size limit: 552 for each recipient, EOM never called.
        """
        conn = lmtp(maxMessageSize=100)
        envelope(conn, "ok1@example.org", "ok2@example.org")
        replies = conn.sendMessage(MESSAGE + b"x" * 200 + b"\r\n")
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(552, "5.3.4")] * 2)
        self.assertEqual(conn.handler.seen, [])

    def test_headerRefused(self) -> None:
        """
        A HEADER hook that refuses: its reply for each recipient.
        """

        class NoSpam(ESMTPHandler):
            def HEADER(self, name: str, value: str) -> Any:
                if name.lower() == "subject":
                    raise ReplyError(550, "5.7.1 No thanks")

        conn = lmtp(NoSpam)
        envelope(conn, "a@example.org", "b@example.org", "c@example.org")
        replies = conn.sendMessage(MESSAGE)
        self.assertEqual([(r.code, r.text) for r in replies], [(550, "No thanks")] * 3)

    def test_bareLineFeed(self) -> None:
        """
        A bare LF under the reject policy: 550 5.5.2 for each recipient.
        """
        conn = lmtp()
        envelope(conn, "ok1@example.org", "ok2@example.org")
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(b"Subject: x\r\n\r\nbare\nline\r\n.\r\n")
        replies = conn.replies()
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(550, "5.5.2")] * 2)

    def test_dataWithoutRecipients(self) -> None:
        """
        DATA with no accepted recipient: 503, as in SMTP.
        """
        conn = lmtp()
        envelope(conn)
        self.assertEqual(conn.command("DATA").code, 503)


class ChunkingTests(SynchronousTestCase):
    """
    BDAT under LMTP: one reply per chunk, and per recipient after LAST.
    """

    def test_bdat(self) -> None:
        conn = lmtp()
        envelope(conn, "ok@example.org", "later@example.org")
        first, rest = MESSAGE[:10], MESSAGE[10:]
        conn.send(b"BDAT %d\r\n" % len(first) + first)
        self.assertEqual([r.code for r in conn.replies()], [250])
        conn.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
        self.assertEqual([r.code for r in conn.replies()], [250, 451])

    def test_bdatTooBig(self) -> None:
        """
        A message over the limit, sent in one last chunk: 552 per recipient.
        """
        conn = lmtp(maxMessageSize=20)
        envelope(conn, "ok1@example.org", "ok2@example.org", "ok3@example.org")
        conn.send(b"BDAT %d LAST\r\n" % len(MESSAGE) + MESSAGE)
        self.assertEqual([r.code for r in conn.replies()], [552] * 3)


class EventTests(SynchronousTestCase):
    """
    The observers hear LMTP's ends of message per recipient.
    """

    def test_partial(self) -> None:
        recorder = Recorder()
        conn = lmtp(observers=[recorder])
        envelope(conn, "ok@example.org", "bad@example.org")
        conn.sendMessage(MESSAGE)
        self.assertEqual(recorder.ended, [("partial", (250, 550))])
        self.assertEqual(recorder.replies[-2:], [("EOM", 250), ("EOM", 550)])


class SMTPCollapseTests(SynchronousTestCase):
    """
    Under SMTP a per-recipient result becomes one reply (RFC 5321 has one
    reply per message): all accepted, the first acceptance; otherwise the
    first temporary failure, else the first permanent one.
    """

    def smtp(self, *recipients: str) -> Reply:
        recorder = Recorder()
        conn = SMTPTestConnection(PerRecipientHandler, observers=[recorder])
        envelope(conn, *recipients, hello="EHLO")
        reply = conn.sendMessage(MESSAGE)
        self.recorder = recorder
        return reply

    def test_allAccepted(self) -> None:
        self.assertEqual(self.smtp("ok1@example.org", "ok2@example.org").code, 250)
        self.assertEqual(self.recorder.ended, [("accepted", (250, 250))])

    def test_temporaryWins(self) -> None:
        reply = self.smtp("ok@example.org", "bad@example.org", "later@example.org")
        self.assertEqual((reply.code, reply.enhanced), (451, "4.2.1"))
        # What the observers hear is what the client was told.
        self.assertEqual(self.recorder.ended, [("refused", (451, 451, 451))])

    def test_permanent(self) -> None:
        reply = self.smtp("ok@example.org", "bad@example.org")
        self.assertEqual((reply.code, reply.enhanced), (550, "5.1.1"))

    def test_rule(self) -> None:
        """
        L{MessageResult.single} and L{MessageResult.outcome} directly.
        """
        ok, temp, perm = Reply(250, "a"), Reply(452, "b"), Reply(554, "c")
        self.assertIs(MessageResult([ok, ok]).single(), ok)
        self.assertIs(MessageResult([perm, temp, ok]).single(), temp)
        self.assertIs(MessageResult([ok, perm]).single(), perm)
        self.assertEqual(MessageResult([ok, perm]).outcome, "partial")
        self.assertEqual(MessageResult([temp, perm]).outcome, "refused")
        self.assertEqual(MessageResult.forAll(perm, 3).replies, (perm,) * 3)

    def test_badArguments(self) -> None:
        """
        Replies must be a sequence or a mapping.
        """
        self.assertRaises(TypeError, PerRecipient, "250 OK")
        self.assertRaises(TypeError, PerRecipient, 250)
