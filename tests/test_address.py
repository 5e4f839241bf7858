"""
Tests for L{esmtpkit.smtp.address}: RFC 5321 mailbox and domain syntax, with the
UTF-8 forms of RFC 6531 and the length limits of section 4.5.3.1.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from esmtpkit.smtp.address import isValidDomain, isValidMailbox

VALID = [
    "user@example.org",
    "first.last+tag@sub.example.co",
    "x@y.z",
    "user@localhost",
    "o'brien@example.ie",
    "a!#$%&'*+/=?^_`{|}~-b@example.org",
    '"john doe"@example.org',
    '"a\\"b"@example.org',
    '"a@b"@example.org',
    '""@example.org',
    "user@[192.0.2.1]",
    "user@[IPv6:2001:db8::1]",
    "user@[IPv6:::ffff:192.0.2.1]",
    "user@[x-tag:stuff]",
    "user@xn--bcher-kva.example",
    "user@123.example",
]

INVALID = [
    "",
    "user",
    "@example.org",
    "user@",
    ".user@example.org",
    "user.@example.org",
    "us..er@example.org",
    "us er@example.org",
    'us"er@example.org',
    "a@b@example.org",
    '"unterminated@example.org',
    "user@-example.org",
    "user@example-.org",
    "user@exa mple.org",
    "user@example..org",
    "user@example.org.",
    "user@ex_ample.org",
    "user@ex\tample.org",
    "us\x00er@example.org",
    "user@[192.0.2.256]",
    "user@[01.2.3.4]",
    "user@[192.0.2.1",
    "user@[]",
    "user@[ 192.0.2.1]",
    "user@[IPv6:zzzz::1]",
    "user@[IPv6:2001:db8:0:0:0:0:0:1:1]",
    "user@[tag:]",
    "a\udcff@example.org",
]


class MailboxTests(SynchronousTestCase):
    """
    L{isValidMailbox} on typical good and bad addresses.
    """

    def test_valid(self) -> None:
        """
        Each valid address is accepted, with and without UTF-8.
        """
        for address in VALID:
            self.assertTrue(isValidMailbox(address), address)
            self.assertTrue(isValidMailbox(address, utf8=True), address)

    def test_invalid(self) -> None:
        """
        Each invalid address is refused, with and without UTF-8.
        """
        for address in INVALID:
            self.assertFalse(isValidMailbox(address), repr(address))
            self.assertFalse(isValidMailbox(address, utf8=True), repr(address))

    def test_utf8OnlyWhenAllowed(self) -> None:
        """
        UTF-8 in the local part or domain needs C{utf8=True}.
        """
        for address in ("jörg@example.org", "user@bücher.example", "用户@例子.广告"):
            self.assertFalse(isValidMailbox(address), address)
            self.assertTrue(isValidMailbox(address, utf8=True), address)

    def test_utf8Quoted(self) -> None:
        """
        UTF-8 inside a quoted local part also needs C{utf8=True}.
        """
        self.assertFalse(isValidMailbox('"jö rg"@example.org'))
        self.assertTrue(isValidMailbox('"jö rg"@example.org', utf8=True))

    def test_badBytesNeverValid(self) -> None:
        """
        Bytes that were not UTF-8 (lone surrogates) are never valid.
        """
        self.assertFalse(isValidMailbox("user@ex\udcffample.org", utf8=True))


class LengthTests(SynchronousTestCase):
    """
    The RFC 5321 length limits, counted in octets.
    """

    def test_localPart(self) -> None:
        """
        A local part of 64 octets is fine, 65 is not.
        """
        self.assertTrue(isValidMailbox("a" * 64 + "@example.org"))
        self.assertFalse(isValidMailbox("a" * 65 + "@example.org"))

    def test_localPartOctets(self) -> None:
        """
        The local part limit counts UTF-8 octets, not characters.
        """
        self.assertTrue(isValidMailbox("é" * 32 + "@example.org", utf8=True))
        self.assertFalse(isValidMailbox("é" * 33 + "@example.org", utf8=True))

    def test_label(self) -> None:
        """
        A label of 63 octets is fine, 64 is not.
        """
        self.assertTrue(isValidDomain("a" * 63 + ".org"))
        self.assertFalse(isValidDomain("a" * 64 + ".org"))

    def test_domain(self) -> None:
        """
        A domain of 255 octets is fine, 256 is not.
        """
        domain255 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61, "e"])
        domain256 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62, "e"])
        self.assertEqual((len(domain255), len(domain256)), (255, 256))
        self.assertTrue(isValidDomain(domain255))
        self.assertFalse(isValidDomain(domain256))

    def test_path(self) -> None:
        """
        The whole path with its angle brackets is at most 256 octets, so a
        mailbox is at most 254.
        """
        local = "a" * 64
        domain189 = ".".join(["b" * 63, "c" * 63, "d" * 61])
        domain190 = ".".join(["b" * 63, "c" * 63, "d" * 62])
        ok = f"{local}@{domain189}"
        tooLong = f"{local}@{domain190}"
        self.assertEqual((len(ok), len(tooLong)), (254, 255))
        self.assertTrue(isValidMailbox(ok))
        self.assertFalse(isValidMailbox(tooLong))


class DomainTests(SynchronousTestCase):
    """
    L{isValidDomain}: names and address literals.
    """

    def test_names(self) -> None:
        """
        Ordinary names are valid; bad labels are not.
        """
        for good in ("example.org", "a-b.example", "localhost", "x1.y2"):
            self.assertTrue(isValidDomain(good), good)
        for bad in (
            "",
            ".",
            "example..org",
            "-a.org",
            "a-.org",
            "ex ample.org",
            "a_b.org",
        ):
            self.assertFalse(isValidDomain(bad), bad)

    def test_ipv4Literal(self) -> None:
        """
        IPv4 literals must be dotted-quad addresses.
        """
        self.assertTrue(isValidDomain("[127.0.0.1]"))
        for bad in ("[256.0.0.1]", "[1.2.3]", "[1.2.3.4.5]", "[1.2.3.4", "1.2.3.4]"):
            self.assertFalse(isValidDomain(bad), bad)

    def test_ipv6Literal(self) -> None:
        """
        IPv6 literals need the C{IPv6:} tag and a valid address, without a
        zone id.
        """
        self.assertTrue(isValidDomain("[IPv6:::1]"))
        self.assertTrue(isValidDomain("[IPv6:2001:DB8::ABCD]"))
        self.assertTrue(isValidDomain("[IPv6:::ffff:10.0.0.1]"))
        for bad in ("[::1]", "[IPv6:]", "[IPv6:1::2::3]", "[IPv6: ::1]", "[IPv6:::g]"):
            self.assertFalse(isValidDomain(bad), bad)

    def test_ipv6ZoneId(self) -> None:
        """
        An IPv6 literal with a zone id is not an RFC 5321 IPv6-addr (only
        hex digits, colons and an embedded IPv4 address are allowed).
        """
        for bad in ("[IPv6:fe80::1%eth0]", "[IPv6:fe80::1%25eth0]", "[IPv6:fe80::1%1]"):
            self.assertFalse(isValidDomain(bad), bad)
        self.assertFalse(isValidMailbox("user@[IPv6:fe80::1%eth0]"))

    def test_generalLiteral(self) -> None:
        """
        A general address literal is C{tag:content}.
        """
        self.assertTrue(isValidDomain("[x-tag:stuff]"))
        self.assertFalse(isValidDomain("[tag:]"))
        self.assertFalse(isValidDomain("[:x]"))
        self.assertFalse(isValidDomain("[tag:a[b]"))

    def test_utf8Domain(self) -> None:
        """
        U-labels only with C{utf8=True}.
        """
        self.assertFalse(isValidDomain("bücher.example"))
        self.assertTrue(isValidDomain("bücher.example", utf8=True))
