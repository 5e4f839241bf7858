"""
Tests for L{esmtpkit.reply}: the L{Reply} value type, L{toReply} and
L{ReplyError}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from esmtpkit.reply import Reply, ReplyError, toReply


class FormattingTests(SynchronousTestCase):
    """
    L{Reply.toBytes}: how a reply goes on the wire.
    """

    def test_singleLine(self) -> None:
        """
        One line: code, space, text, CRLF.
        """
        self.assertEqual(Reply(250, "OK").toBytes(), b"250 OK\r\n")

    def test_multiLine(self) -> None:
        """
        Every line but the last is C{250-}, the last C{250 }.
        """
        self.assertEqual(
            Reply(250, "first", "second", "third").toBytes(),
            b"250-first\r\n250-second\r\n250 third\r\n",
        )

    def test_enhancedOnEveryLine(self) -> None:
        """
        The enhanced code follows the reply code on every line.
        """
        reply = Reply(250, "a", "b", enhanced="2.0.0")
        self.assertEqual(reply.toBytes(), b"250-2.0.0 a\r\n250 2.0.0 b\r\n")

    def test_enhancedSuppressed(self) -> None:
        """
        C{toBytes(enhanced=False)} leaves the enhanced code out.
        """
        reply = Reply(550, "5.7.1 Denied")
        self.assertEqual(reply.toBytes(enhanced=False), b"550 Denied\r\n")
        self.assertEqual(reply.toBytes(), b"550 5.7.1 Denied\r\n")

    def test_emptyText(self) -> None:
        """
        A reply without text is the bare code (no trailing space).
        """
        self.assertEqual(Reply(250).toBytes(), b"250\r\n")
        self.assertEqual(Reply(250).lines, ("",))
        self.assertEqual(Reply(250, "", "b").toBytes(), b"250-\r\n250 b\r\n")

    def test_utf8Text(self) -> None:
        """
        Non-ASCII text is written as UTF-8.
        """
        self.assertEqual(Reply(250, "grüß").toBytes(), "250 grüß\r\n".encode())


class EnhancedCodeTests(SynchronousTestCase):
    """
    Enhanced status codes given explicitly or leading the text.
    """

    def test_parsedFromText(self) -> None:
        """
        An enhanced code leading the first line is taken out of the text.
        """
        reply = Reply(550, "5.7.1 Relaying denied")
        self.assertEqual(reply.enhanced, "5.7.1")
        self.assertEqual(reply.lines, ("Relaying denied",))
        self.assertEqual(Reply(451, "4.3.0 Try later").enhanced, "4.3.0")
        self.assertEqual(Reply(250, "2.1.5 ok", "more").lines, ("ok", "more"))

    def test_codeAlone(self) -> None:
        """
        A first line that is only an enhanced code.
        """
        reply = Reply(250, "2.0.0")
        self.assertEqual((reply.enhanced, reply.lines), ("2.0.0", ("",)))

    def test_notACode(self) -> None:
        """
        Text that only looks like a code stays text.
        """
        for text in ("2.0.0x", "2.1000.0 x", "1.2.3 x", "2.0 x", "x 2.0.0"):
            reply = Reply(250, text)
            self.assertIsNone(reply.enhanced, text)
            self.assertEqual(reply.lines, (text,))

    def test_explicit(self) -> None:
        """
        C{enhanced=} sets the code; the text is left alone.
        """
        reply = Reply(250, "fine", enhanced="2.1.0")
        self.assertEqual((reply.enhanced, reply.lines), ("2.1.0", ("fine",)))

    def test_explicitInvalid(self) -> None:
        """
        An explicit enhanced code that is not one raises ValueError.
        """
        for bad in ("2.0", "x.y.z", "7.0.0", "2.0.0.0", "2.1000.0", "", " 2.0.0"):
            self.assertRaises(ValueError, Reply, 250, "t", enhanced=bad)

    def test_explicitTrailingSpace(self) -> None:
        """
        C{enhanced="2.0.0 "} is not an enhanced status code either: it must
        not be accepted as one (it would be written with a doubled space).
        """
        self.assertRaises(ValueError, Reply, 250, "t", enhanced="2.0.0 ")

    def test_classMismatchIgnored(self) -> None:
        """
        An enhanced code whose class disagrees with the reply code is not
        used (RFC 3463).
        """
        self.assertIsNone(Reply(250, "5.7.1 odd").enhanced)
        self.assertIsNone(Reply(550, "x", enhanced="2.0.0").enhanced)

    def test_withEnhanced(self) -> None:
        """
        L{Reply.withEnhanced} adds a code only when there is none.
        """
        plain = Reply(250, "ok")
        self.assertEqual(
            plain.withEnhanced("2.0.0"), Reply(250, "ok", enhanced="2.0.0")
        )
        self.assertIsNone(plain.enhanced)
        own = Reply(250, "ok", enhanced="2.1.5")
        self.assertIs(own.withEnhanced("2.0.0"), own)


class SanitisingTests(SynchronousTestCase):
    """
    Control characters in text can never inject extra reply lines.
    """

    def test_crlfReplaced(self) -> None:
        """
        CR and LF in a line become spaces: one reply line on the wire.
        """
        reply = Reply(250, "a\r\n250 injected")
        self.assertEqual(reply.toBytes().count(b"\r\n"), 1)
        self.assertNotIn("\r", reply.lines[0])
        self.assertNotIn("\n", reply.lines[0])
        self.assertEqual(reply.toBytes(), b"250 a  250 injected\r\n")

    def test_otherControls(self) -> None:
        """
        NUL, bare LF, TAB, DEL and friends are replaced too.
        """
        reply = Reply(250, "a\x00b\nc\td\x7fe\x1bf")
        self.assertEqual(reply.lines, ("a b c d e f",))

    def test_everyLine(self) -> None:
        """
        Every line is sanitised, not only the first.
        """
        wire = Reply(250, "ok", "x\r\n550 y").toBytes()
        self.assertEqual(wire, b"250-ok\r\n250 x  550 y\r\n")


class ValidationTests(SynchronousTestCase):
    """
    Invalid codes are refused.
    """

    def test_codeRange(self) -> None:
        """
        Codes outside 200-599 raise ValueError.
        """
        for code in (0, 99, 199, 600, 999, -250):
            self.assertRaises(ValueError, Reply, code, "x")
        Reply(200, "x")
        Reply(599, "x")

    def test_codeType(self) -> None:
        """
        Codes that are not ints (including bools) raise TypeError.
        """
        for code in ("250", 250.0, None, True):
            self.assertRaises(TypeError, Reply, code, "x")


class ValueTests(SynchronousTestCase):
    """
    Equality, hashing and the convenience properties.
    """

    def test_equality(self) -> None:
        """
        Replies are equal when code, lines and enhanced code are.
        """
        self.assertEqual(Reply(250, "2.0.0 ok"), Reply(250, "ok", enhanced="2.0.0"))
        self.assertNotEqual(Reply(250, "ok"), Reply(250, "ok", enhanced="2.0.0"))
        self.assertNotEqual(Reply(250, "ok"), Reply(251, "ok"))
        self.assertNotEqual(Reply(250, "ok"), Reply(250, "ok", ""))
        self.assertEqual(len({Reply(250, "a"), Reply(250, "a"), Reply(250, "b")}), 2)
        self.assertNotEqual(Reply(250, "ok"), (250, "ok"))

    def test_text(self) -> None:
        """
        C{text} joins the lines with newlines.
        """
        self.assertEqual(Reply(250, "a", "b").text, "a\nb")

    def test_positive(self) -> None:
        """
        2xx and 3xx are positive, 4xx and 5xx are not.
        """
        self.assertTrue(Reply(250).positive)
        self.assertTrue(Reply(354).positive)
        self.assertFalse(Reply(451).positive)
        self.assertFalse(Reply(550).positive)

    def test_repr(self) -> None:
        """
        The repr shows code, lines and enhanced code.
        """
        self.assertEqual(
            repr(Reply(550, "5.7.1 no", "x")), "Reply(550, 'no', 'x', enhanced='5.7.1')"
        )


class ToReplyTests(SynchronousTestCase):
    """
    L{toReply} converts hook results.
    """

    def test_reply(self) -> None:
        """
        A Reply is returned as it is.
        """
        reply = Reply(250, "ok")
        self.assertIs(toReply(reply), reply)

    def test_tuples(self) -> None:
        """
        Seed-style tuples and lists become replies.
        """
        self.assertEqual(toReply((250, "a", "b")), Reply(250, "a", "b"))
        self.assertEqual(toReply([550, "5.7.1 no"]), Reply(550, "no", enhanced="5.7.1"))
        self.assertEqual(toReply((221,)), Reply(221, ""))
        self.assertEqual(toReply((250, 42)), Reply(250, "42"))

    def test_notReplies(self) -> None:
        """
        Anything else raises TypeError.
        """
        bad: object
        for bad in (
            "250 ok",
            b"250 ok",
            250,
            (),
            [],
            ("250", "x"),
            {"code": 250},
            None,
        ):
            self.assertRaises(TypeError, toReply, bad)

    def test_badCode(self) -> None:
        """
        A tuple with an out-of-range code raises ValueError.
        """
        self.assertRaises(ValueError, toReply, (999, "x"))
        self.assertRaises(ValueError, toReply, (100, "x"))


class ReplyErrorTests(SynchronousTestCase):
    """
    L{ReplyError} carries a reply.
    """

    def test_fromCodeAndLines(self) -> None:
        """
        C{ReplyError(code, *lines)} builds the reply.
        """
        error = ReplyError(550, "5.7.1 No thanks", "second")
        self.assertEqual(
            error.reply, Reply(550, "No thanks", "second", enhanced="5.7.1")
        )
        self.assertIsInstance(error, Exception)

    def test_fromReply(self) -> None:
        """
        C{ReplyError(Reply(...))} keeps that reply.
        """
        reply = Reply(452, "full")
        self.assertIs(ReplyError(reply).reply, reply)

    def test_invalid(self) -> None:
        """
        An invalid code fails at construction.
        """
        self.assertRaises(ValueError, ReplyError, 700, "x")
