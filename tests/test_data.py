"""
Tests for L{esmtpkit.core.headers}: the header line classifier and the body
scanner (dot-unstuffing and the end-of-data marker).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit.core.headers import (
    BODY,
    CONTINUATION,
    END,
    HEADER,
    HeaderParser,
    parseHeaderSection,
)
from esmtpkit.smtp.framing import BodyScanner


class HeaderParserTests(SynchronousTestCase):
    """
    L{HeaderParser} classifies lines and unfolds fields.
    """

    def test_kinds(self) -> None:
        """
        Each line gets its kind; a field is completed by the next line that
        does not continue it.
        """
        parser = HeaderParser()
        self.assertEqual(parser.line(b"Subject: hi"), (HEADER, None))
        self.assertEqual(parser.line(b"To: x"), (HEADER, ("Subject", "hi")))
        self.assertEqual(parser.line(b" cont"), (CONTINUATION, None))
        self.assertEqual(parser.line(b"\tcont2"), (CONTINUATION, None))
        self.assertEqual(parser.line(b""), (END, ("To", "x cont\tcont2")))

    def test_bodyLine(self) -> None:
        """
        A line that is not a header ends the headers as a body line and
        completes the pending field.
        """
        parser = HeaderParser()
        parser.line(b"Subject: s")
        self.assertEqual(parser.line(b"From mbox line"), (BODY, ("Subject", "s")))

    def test_leadingContinuation(self) -> None:
        """
        A folded line with no field before it is body.
        """
        self.assertEqual(HeaderParser().line(b" leading"), (BODY, None))
        self.assertEqual(HeaderParser().line(b"\tleading"), (BODY, None))

    def test_nameSyntax(self) -> None:
        """
        Field names are printable ASCII without colon or space; white space
        around the colon is not part of name or value.
        """
        parser = HeaderParser()
        parser.line(b"Name:value")
        self.assertEqual(
            parser.line(b"X-Odd.Name_1 :\t v"), (HEADER, ("Name", "value"))
        )
        self.assertEqual(parser.finish(), ("X-Odd.Name_1", "v"))
        for line in (b"No colon here", b": empty name", b"Bad Name: x", b"\xffX: y"):
            self.assertEqual(HeaderParser().line(line)[0], BODY, line)

    def test_emptyValue(self) -> None:
        """
        A field may be empty.
        """
        parser = HeaderParser()
        parser.line(b"X-Empty:")
        self.assertEqual(parser.finish(), ("X-Empty", ""))

    def test_valueBytesKept(self) -> None:
        """
        Non-UTF-8 bytes survive in the value through surrogateescape.
        """
        parser = HeaderParser()
        parser.line(b"X: caf\xe9 \xc3\xa9")
        completed = parser.finish()
        assert completed is not None
        name, value = completed
        self.assertEqual(value.encode("utf-8", "surrogateescape"), b"caf\xe9 \xc3\xa9")
        self.assertIn("é", value)

    def test_finish(self) -> None:
        """
        L{HeaderParser.finish} completes the pending field once.
        """
        parser = HeaderParser()
        self.assertIsNone(parser.finish())
        parser.line(b"A: 1")
        parser.line(b"  2")
        self.assertEqual(parser.finish(), ("A", "1  2"))
        self.assertIsNone(parser.finish())


def scanAll(
    pieces: list[bytes], atLineStart: bool = True
) -> tuple[bytes, bytes | None]:
    """
    Feed C{pieces} to a new scanner until it reports the end; return the
    content and the leftover (everything after the marker, including the
    pieces not fed yet), or L{None} if no end was found.
    """
    scanner = BodyScanner(atLineStart)
    content: list[bytes] = []
    for index, piece in enumerate(pieces):
        out, leftover = scanner.feed(piece)
        content.extend(out)
        if leftover is not None:
            return b"".join(content), leftover + b"".join(pieces[index + 1 :])
    return b"".join(content), None


def reference(stream: bytes) -> tuple[bytes, bytes | None]:
    """
    What RFC 5321 says the content and the rest are, line by line: a line
    that is exactly "." ends the data, a leading dot is removed from any
    other line.
    """
    out: list[bytes] = []
    pos = 0
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            return b"".join(out), None
        line = stream[pos:end]
        if line == b".":
            return b"".join(out), stream[end + 2 :]
        if line.startswith(b"."):
            line = line[1:]
        out.append(line + b"\r\n")
        pos = end + 2


def _lineByLine(section: bytes) -> list[tuple[str, str]] | None:
    """
    What L{HeaderParser} makes of C{section} fed one line at a time, or
    L{None} if a line is not part of the header section.
    """
    parser = HeaderParser()
    fields = []
    for line in section.split(b"\r\n")[:-1]:
        kind, completed = parser.line(line)
        if kind in (BODY, END):
            return None
        if completed is not None:
            fields.append(completed)
    completed = parser.finish()
    if completed is not None:
        fields.append(completed)
    return fields


headerLines = st.lists(
    st.one_of(
        st.builds(
            lambda name, sep, value: name + sep + value,
            st.sampled_from([b"Subject", b"X-A", b"to", b"\xc3\xa9t\xc3\xa9", b"A:B"]),
            st.sampled_from([b":", b": ", b" : ", b"\t:\t", b" "]),
            st.binary(max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v),
        ),
        st.builds(
            lambda ws, value: ws + value,
            st.sampled_from([b" ", b"\t", b"  "]),
            st.binary(max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v),
        ),
        st.binary(max_size=8).filter(lambda v: b"\r" not in v and b"\n" not in v),
    ),
    min_size=1,
    max_size=8,
)


class HeaderSectionTests(SynchronousTestCase):
    """
    L{parseHeaderSection} takes a whole header section as L{HeaderParser}
    would line by line.
    """

    def test_fields(self) -> None:
        """
        Fields in order, continuation lines unfolded, values after the colon
        and its surrounding blanks.
        """
        self.assertEqual(
            parseHeaderSection(b"Subject: a\r\n b\r\nTo:x\r\n\tc\r\nX-Y:\r\n"),
            [("Subject", "a b"), ("To", "x\tc"), ("X-Y", "")],
        )

    def test_notAField(self) -> None:
        """
        A line that is neither a field nor a continuation, or a
        continuation with no field before it, makes the section not plain.
        """
        self.assertIsNone(parseHeaderSection(b"Subject: a\r\nnot a field\r\n"))
        self.assertIsNone(parseHeaderSection(b" folded first\r\nA: b\r\n"))
        self.assertIsNone(parseHeaderSection(b"\r\nA: b\r\n"))

    @settings(max_examples=300)
    @given(headerLines)
    def test_sameAsLineByLine(self, lines: list[bytes]) -> None:
        """
        For any lines, the result is L{HeaderParser}'s, or L{None} exactly
        when a line would not be part of the header section.
        """
        section = b"".join(line + b"\r\n" for line in lines)
        self.assertEqual(parseHeaderSection(section), _lineByLine(section))


class BodyScannerTests(SynchronousTestCase):
    """
    L{BodyScanner} finds C{<CR><LF>.<CR><LF>} and undoes dot-stuffing.
    """

    def test_end(self) -> None:
        """
        The CRLF before the dot is content; the bytes after the marker are
        the leftover.
        """
        self.assertEqual(
            scanAll([b"hello\r\nworld\r\n.\r\nNOOP\r\n"]),
            (b"hello\r\nworld\r\n", b"NOOP\r\n"),
        )

    def test_emptyBody(self) -> None:
        """
        A dot at the very start ends an empty body.
        """
        self.assertEqual(scanAll([b".\r\nQUIT\r\n"]), (b"", b"QUIT\r\n"))

    def test_leftoverEmpty(self) -> None:
        """
        Nothing after the marker gives the leftover C{b""} (not L{None}).
        """
        self.assertEqual(scanAll([b"x\r\n.\r\n"]), (b"x\r\n", b""))

    def test_unstuffing(self) -> None:
        """
        A leading dot is removed from every line, also the first.
        """
        self.assertEqual(
            scanAll([b"..first\r\n...\r\n.x\r\nno.dot\r\n.\r\n"]),
            (b".first\r\n..\r\nx\r\nno.dot\r\n", b""),
        )

    def test_nearMisses(self) -> None:
        """
        C{<LF>.<LF>}, C{<CR><LF>.<LF>}, C{<LF>.<CR><LF>} and C{<CR>.<CR>}
        never end the message.
        """
        for near in (b"a\n.\nb", b"a\r\n.\nb", b"a\n.\r\nb", b"a\r.\rb", b"a\r.\r\nb"):
            stream = near + b"\r\n"
            content, leftover = scanAll([stream])
            self.assertIsNone(leftover, near)
            self.assertEqual(content, reference(stream + b".\r\n")[0], near)
            # ... and the real marker after them still works, at any split.
            full = stream + b".\r\nNEXT"
            expected = reference(full)
            for i in range(len(full) + 1):
                self.assertEqual(scanAll([full[:i], full[i:]]), expected, (near, i))

    def test_dotAtStartMidLine(self) -> None:
        """
        Started in the middle of a line, a leading ".\\r\\n" is content.
        """
        self.assertEqual(
            scanAll([b".\r\nfoo\r\n.\r\n"], atLineStart=False), (b".\r\nfoo\r\n", b"")
        )

    def test_holdsBackLittle(self) -> None:
        """
        Without dots, at most two bytes are held back between feeds.
        """
        stream = b"line one\r\nline two\r\r\n\n\rthree\r\n" * 3
        scanner = BodyScanner()
        out = 0
        for i in range(len(stream)):
            pieces, leftover = scanner.feed(stream[i : i + 1])
            self.assertIsNone(leftover)
            out += sum(len(p) for p in pieces)
            self.assertLessEqual(i + 1 - out, 2, i)

    def test_byteByByte(self) -> None:
        """
        Feeding one byte at a time gives the same result as all at once.
        """
        stream = b"Hi\r\n..dots\r\n.\r\n\r\n.\r\nAFTER\r\n"
        self.assertEqual(
            scanAll([stream[i : i + 1] for i in range(len(stream))]), reference(stream)
        )

    def test_reusableAfterEnd(self) -> None:
        """
        Nothing is held back once the end was found.
        """
        scanner = BodyScanner()
        pieces, leftover = scanner.feed(b"a\r\n.\r\n")
        self.assertEqual((b"".join(pieces), leftover), (b"a\r\n", b""))


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(
        st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n."]), max_size=40
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_scannerMatchesReference(body: list[bytes], cuts: list[int]) -> None:
    """
    However the stream is cut into pieces, the scanner gives the content and
    leftover RFC 5321 describes.
    """
    stream = b"".join(body) + b"\r\n.\r\nREST"
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [
        stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)
    ]
    assert scanAll(pieces) == reference(stream)
