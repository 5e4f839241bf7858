"""
Tests for L{esmtpkit.smtp.command}: command splitting, MAIL/RCPT paths, ESMTP
parameters and mailbox checks.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from esmtpkit.reply import Reply, ReplyError
from esmtpkit.settings import Settings
from esmtpkit.smtp.command import (
    checkMailbox,
    parseParams,
    parsePath,
    splitCommand,
)
from esmtpkit.smtp.params import checkMailParams, checkRcptParams

MISSING = Reply(501, "path missing", enhanced="5.5.4")


class SplitCommandTests(SynchronousTestCase):
    """
    L{splitCommand} separates the verb from its argument.
    """

    def test_verbUpperCased(self) -> None:
        """
        The verb is upper-cased, the argument kept as sent.
        """
        self.assertEqual(splitCommand(b"mail FROM:<a@b>"), ("MAIL", "FROM:<a@b>"))
        self.assertEqual(
            splitCommand(b"eHlO Client.Example"), ("EHLO", "Client.Example")
        )

    def test_noArgument(self) -> None:
        """
        A bare verb has the argument C{""}, even with trailing spaces.
        """
        self.assertEqual(splitCommand(b"NOOP"), ("NOOP", ""))
        self.assertEqual(splitCommand(b"QUIT "), ("QUIT", ""))

    def test_argumentStripped(self) -> None:
        """
        Spaces around the argument are removed.
        """
        self.assertEqual(splitCommand(b"HELO   x.example  "), ("HELO", "x.example"))

    def test_notAVerb(self) -> None:
        """
        Lines that do not start with a plausible verb give C{("", "")}.
        """
        for line in (
            b"",
            b"  NOOP",
            b"123 x",
            b"A" * 17,
            b"NOOP\tx",
            b"HELO\xff",
            b"N0OP",
        ):
            self.assertEqual(splitCommand(line), ("", ""), line)

    def test_longestVerb(self) -> None:
        """
        Verbs of up to 16 letters are accepted.
        """
        self.assertEqual(splitCommand(b"A" * 16), ("A" * 16, ""))

    def test_utf8Argument(self) -> None:
        """
        The argument is decoded as UTF-8, with surrogateescape for bad bytes.
        """
        self.assertEqual(splitCommand("VRFY jörg".encode()), ("VRFY", "jörg"))
        verb, arg = splitCommand(b"VRFY \xff")
        self.assertEqual(arg.encode("utf-8", "surrogateescape"), b"\xff")


class ParsePathTests(SynchronousTestCase):
    """
    L{parsePath} splits C{FROM:<path> params} / C{TO:<path> params}.
    """

    def parse(self, arg: str, keyword: str = "FROM") -> tuple[str, str]:
        """
        Parse with the L{MISSING} reply.
        """
        return parsePath(arg, keyword, MISSING)

    def error(self, arg: str, keyword: str = "FROM") -> Reply:
        """
        The reply of the L{ReplyError} that parsing C{arg} raises.
        """
        with self.assertRaises(ReplyError) as caught:
            self.parse(arg, keyword)
        reply: Reply = caught.exception.reply
        return reply

    def test_simple(self) -> None:
        """
        The address without brackets, and the parameter text.
        """
        self.assertEqual(self.parse("FROM:<a@b.example>"), ("a@b.example", ""))
        self.assertEqual(
            self.parse("FROM:<a@b.example> SIZE=1 BODY=7BIT"),
            ("a@b.example", "SIZE=1 BODY=7BIT"),
        )
        self.assertEqual(self.parse("TO:<c@d.example>", "TO"), ("c@d.example", ""))

    def test_keywordCaseAndSpace(self) -> None:
        """
        The keyword is case-insensitive; a space after the colon and extra
        spaces around parameters are tolerated.
        """
        self.assertEqual(self.parse("from:<a@b.example>"), ("a@b.example", ""))
        self.assertEqual(self.parse("To: <a@b.example>", "TO"), ("a@b.example", ""))
        self.assertEqual(self.parse("FROM:<a@b>  SIZE=1  "), ("a@b", "SIZE=1"))

    def test_withoutBrackets(self) -> None:
        """
        A path without angle brackets is accepted (sloppy clients).
        """
        self.assertEqual(
            self.parse("FROM:a@b.example SIZE=2"), ("a@b.example", "SIZE=2")
        )

    def test_nullPath(self) -> None:
        """
        C{<>} is the null path.
        """
        self.assertEqual(self.parse("FROM:<>"), ("", ""))
        self.assertEqual(self.parse("FROM:<> SIZE=10"), ("", "SIZE=10"))

    def test_sourceRoute(self) -> None:
        """
        A source route is dropped (RFC 5321 section 3.3).
        """
        self.assertEqual(
            self.parse("FROM:<@a.example,@b.example:user@c.example>"),
            ("user@c.example", ""),
        )
        self.assertEqual(
            self.parse("TO:<@relay.example:bob@d.example> X=1", "TO"),
            ("bob@d.example", "X=1"),
        )

    def test_badSourceRoute(self) -> None:
        """
        A source route without its colon is a 501.
        """
        self.assertEqual(self.error("FROM:<@a.example user@c>").code, 501)

    def test_quotedLocalPart(self) -> None:
        """
        Quoted local parts may contain spaces, C{>} and escaped quotes; the
        path ends at the first C{>} outside quotes.
        """
        self.assertEqual(
            self.parse('FROM:<"john doe"@example.org>'), ('"john doe"@example.org', "")
        )
        self.assertEqual(
            self.parse('FROM:<"a>b"@example.org> SIZE=5'),
            ('"a>b"@example.org', "SIZE=5"),
        )
        self.assertEqual(
            self.parse('FROM:<"a\\">"@x.org> SIZE=5'), ('"a\\">"@x.org', "SIZE=5")
        )

    def test_unbalanced(self) -> None:
        """
        A missing closing bracket is a 501.
        """
        reply = self.error("FROM:<a@b.example")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"))
        self.assertEqual(self.error('FROM:<"a>b@example.org').code, 501)

    def test_noSpaceAfterPath(self) -> None:
        """
        Parameters glued to the path are a 501.
        """
        self.assertEqual(self.error("FROM:<a@b>SIZE=1").code, 501)
        self.assertEqual(self.error("FROM:<<a@b>>").code, 501)

    def test_missing(self) -> None:
        """
        No path at all gives the caller's reply.
        """
        self.assertIs(self.error("FROM:"), MISSING)
        self.assertIs(self.error("FROM:   "), MISSING)

    def test_wrongKeyword(self) -> None:
        """
        The wrong keyword (or none) is a 501 naming the right syntax.
        """
        reply = self.error("TO:<x@y>")
        self.assertEqual(reply.code, 501)
        self.assertIn("MAIL FROM", reply.text)
        reply = self.error("FROM:<x@y>", "TO")
        self.assertIn("RCPT TO", reply.text)
        self.assertEqual(self.error("").code, 501)
        self.assertEqual(self.error("FROM <x@y>").code, 501)


class ParseParamsTests(SynchronousTestCase):
    """
    L{parseParams} parses C{KEY=value KEY2 ...}.
    """

    def error(self, text: str, utf8: bool = False) -> Reply:
        """
        The reply of the L{ReplyError} that parsing C{text} raises.
        """
        with self.assertRaises(ReplyError) as caught:
            parseParams(text, utf8)
        reply: Reply = caught.exception.reply
        return reply

    def test_empty(self) -> None:
        """
        No text, no parameters.
        """
        self.assertEqual(parseParams(""), {})

    def test_values(self) -> None:
        """
        Keywords are upper-cased, values kept; a bare keyword maps to None.
        """
        self.assertEqual(
            parseParams("size=10 BODY=8bitmime SMTPUTF8 X-Y=a+b"),
            {"SIZE": "10", "BODY": "8bitmime", "SMTPUTF8": None, "X-Y": "a+b"},
        )

    def test_extraSpaces(self) -> None:
        """
        Several spaces between parameters are fine.
        """
        self.assertEqual(
            parseParams("SIZE=1   BODY=7BIT"), {"SIZE": "1", "BODY": "7BIT"}
        )

    def test_duplicate(self) -> None:
        """
        The same keyword twice (in any case) is a 501.
        """
        reply = self.error("SIZE=1 size=2")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"))
        self.assertEqual(self.error("SMTPUTF8 SMTPUTF8").code, 501)

    def test_syntax(self) -> None:
        """
        Bad keywords and values are 501.
        """
        for text in ("=x", "SI_ZE=1", "-X=1", "SIZE=a=b", "SIZE=", "<c@d>", "X=\x01"):
            self.assertEqual(self.error(text).code, 501, text)

    def test_utf8Values(self) -> None:
        """
        UTF-8 in values only when allowed.
        """
        self.assertEqual(self.error("X=é").code, 501)
        self.assertEqual(parseParams("X=é", utf8=True), {"X": "é"})

    def test_errorTextSafe(self) -> None:
        """
        The error text does not echo control characters.
        """
        reply = self.error("X=\x1b[31m")
        self.assertNotIn("\x1b", reply.text)


class CheckMailboxTests(SynchronousTestCase):
    """
    L{checkMailbox} picks the right refusal.
    """

    def reply(self, address: str, utf8: bool, sender: bool) -> Reply:
        """
        The reply of the L{ReplyError} raised for C{address}.
        """
        with self.assertRaises(ReplyError) as caught:
            checkMailbox(address, utf8, sender)
        reply: Reply = caught.exception.reply
        return reply

    def test_valid(self) -> None:
        """
        Valid addresses pass silently.
        """
        checkMailbox("a@example.org", False, True)
        checkMailbox("jörg@exämple.org", True, False)

    def test_badSender(self) -> None:
        """
        A bad reverse-path: 501 5.1.7.
        """
        reply = self.reply("nobody", False, True)
        self.assertEqual((reply.code, reply.enhanced), (501, "5.1.7"))

    def test_badRecipient(self) -> None:
        """
        A bad forward-path: 501 5.1.3.
        """
        reply = self.reply("nobody@", False, False)
        self.assertEqual((reply.code, reply.enhanced), (501, "5.1.3"))

    def test_utf8NotAllowed(self) -> None:
        """
        A valid UTF-8 address without SMTPUTF8: 553 5.6.7; an invalid one is
        still a syntax error.
        """
        for sender in (True, False):
            reply = self.reply("jörg@exämple.org", False, sender)
            self.assertEqual((reply.code, reply.enhanced), (553, "5.6.7"))
        self.assertEqual(self.reply("jörg@@x.org", False, True).code, 501)

    def test_knownParameters(self) -> None:
        """
        esmtpkit itself knows SIZE, BODY, SMTPUTF8 and (with DSN) RET and
        ENVID on MAIL, NOTIFY and ORCPT on RCPT; the rest is marked unknown.
        """
        mail = checkMailParams(
            parseParams("SIZE=1 BODY=8bitmime SMTPUTF8 RET=FULL ENVID=x X-Y=1 Z"),
            Settings(),
            True,
        )
        self.assertEqual(mail.unknown, {"X-Y", "Z"})
        rcpt = checkRcptParams(
            parseParams("NOTIFY=NEVER ORCPT=rfc822;a@b.c X-Y=1"),
            Settings(),
            True,
            False,
        )
        self.assertEqual(rcpt.unknown, {"X-Y"})
        noDSN = checkMailParams(parseParams("RET=FULL"), Settings(dsn=False), True)
        self.assertEqual(noDSN.unknown, {"RET"})
