"""
Unit tests of L{esmtpkit.security.scram}: verifiers and their text form, the server
side of the SCRAM-SHA-256 exchange (RFC 7677's test vector, checked both
against the server and against the independent client in
L{tests.tlshelpers}), malformed messages, user enumeration, the file
checker, and C{python -m esmtpkit scram}.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from esmtpkit.security import scram
from esmtpkit.security.scram import (
    IScramSHA256Credentials,
    IScramVerifierSource,
    ScramFileChecker,
    ScramServerExchange,
    ScramVerifier,
    makeVerifier,
)

from .helpers import tempDir
from .tlshelpers import ScramError, ScramSHA256Client

# RFC 7677 section 3.
RFC_USER = "user"
RFC_PASSWORD = "pencil"
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_SUFFIX = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

SECRET = b"s" * 32


class Source:
    """
    An L{IScramVerifierSource} over a dict, counting look-ups.
    """

    def __init__(self, users: dict[str, ScramVerifier]) -> None:
        self.users = users
        self.asked: list[str] = []

    def scramVerifier(self, username: str) -> Deferred[ScramVerifier | None]:
        self.asked.append(username)
        return succeed(self.users.get(username))


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert len(results) == 1, "Deferred has not fired"
    return results[0]


def _rfcVerifier() -> ScramVerifier:
    return makeVerifier(RFC_PASSWORD, RFC_SALT, 4096)


def _patchServerNonce(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Make the server's random nonce part be RFC 7677's: the random bytes are
    a marker, and base64 of the marker is the RFC suffix (the suffix is not
    base64 output, so only its encoding can be stood in for).
    """
    marker = b"\x01" * 18
    realB64 = base64.b64encode

    def b64encode(data: bytes) -> bytes:
        if data == marker:
            return RFC_SERVER_SUFFIX.encode("ascii")
        return realB64(data)

    monkeypatch.setattr(scram, "os", SimpleNamespace(urandom=lambda n: marker[:n]))
    monkeypatch.setattr(
        scram,
        "base64",
        SimpleNamespace(b64encode=b64encode, b64decode=base64.b64decode),
    )


# -- verifiers ---------------------------------------------------------------


def test_verifierRoundTrip() -> None:
    """
    toText/fromText give back the same verifier; the text has the
    documented layout and does not contain the password.
    """
    verifier = makeVerifier("correct horse", iterations=4096)
    text = verifier.toText()
    assert text.startswith("SCRAM-SHA-256$4096:")
    assert "correct horse" not in text
    assert ScramVerifier.fromText(text) == verifier
    assert len(verifier.salt) >= 16
    assert verifier.matches("correct horse")
    assert not verifier.matches("correct horsE")


def test_verifierSaltIsRandom() -> None:
    """
    Two verifiers of the same password differ (fresh salt each time).
    """
    a, b = makeVerifier("same"), makeVerifier("same")
    assert a.salt != b.salt
    assert a.storedKey != b.storedKey


def test_verifierRFC7677Keys() -> None:
    """
    With RFC 7677's salt and count, the verifier's keys produce the RFC's
    server signature for the RFC's AuthMessage.
    """
    import hashlib
    import hmac

    verifier = _rfcVerifier()
    authMessage = b",".join(
        (RFC_CLIENT_FIRST[3:], RFC_SERVER_FIRST, RFC_CLIENT_FINAL.rsplit(b",p=", 1)[0])
    )
    signature = hmac.new(verifier.serverKey, authMessage, hashlib.sha256).digest()
    assert b"v=" + base64.b64encode(signature) == RFC_SERVER_FINAL


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
        "SCRAM-SHA-256$many:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
        "SCRAM-SHA-256$4096:not*base64$"
        + base64.b64encode(b"k" * 32).decode()
        + ":"
        + base64.b64encode(b"k" * 32).decode(),
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
        + base64.b64encode(b"short").decode()
        + ":"
        + base64.b64encode(b"k" * 32).decode(),
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==",
    ],
)
def test_verifierFromTextRejects(text: str) -> None:
    """
    fromText raises ValueError on anything but a well-formed verifier.
    """
    with pytest.raises(ValueError):
        ScramVerifier.fromText(text)


def test_saslprepNormalisation() -> None:
    """
    Passwords are normalised (SASLprep uses NFKC): a compatibility character
    matches its normal form.
    """
    verifier = makeVerifier("pass\u2163")  # ROMAN NUMERAL FOUR
    assert verifier.matches("passIV")


# -- the exchange ------------------------------------------------------------


def test_rfc7677Exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    RFC 7677's exchange, byte for byte: the server-first-message, the
    acceptance of the RFC's client proof, and the RFC's server signature.
    """
    _patchServerNonce(monkeypatch)
    exchange = ScramServerExchange(Source({RFC_USER: _rfcVerifier()}), SECRET)
    assert _result(exchange.clientFirst(RFC_CLIENT_FIRST)) == RFC_SERVER_FIRST
    credentials, final = exchange.clientFinal(RFC_CLIENT_FINAL)
    assert verifyObject(IScramSHA256Credentials, credentials)
    assert credentials.username == RFC_USER
    assert credentials.proofIsValid()
    assert final == RFC_SERVER_FINAL


def test_clientAgainstRFC7677() -> None:
    """
    The test client computes RFC 7677's proof and accepts only the RFC's
    server signature (it is the yardstick for the end-to-end tests).
    """
    client = ScramSHA256Client(RFC_USER, RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    assert client.first() == RFC_CLIENT_FIRST
    assert client.final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify(RFC_SERVER_FINAL)
    forged = base64.b64encode(b"\0" * 32)
    with pytest.raises(ScramError):
        client.verify(b"v=" + forged)


def _exchange(
    source: Source, username: str, password: str, secret: bytes = SECRET
) -> tuple[Any, bytes, ScramSHA256Client, bytes]:
    client = ScramSHA256Client(username, password)
    exchange = ScramServerExchange(source, secret)
    serverFirst = _result(exchange.clientFirst(client.first()))
    credentials, final = exchange.clientFinal(client.final(serverFirst))
    return credentials, final, client, serverFirst


def test_exchangeWithClient() -> None:
    """
    A full exchange with the test client and a random nonce: the proof is
    accepted and the server signature verifies.
    """
    source = Source({"alice": makeVerifier("wonderland")})
    credentials, final, client, serverFirst = _exchange(source, "alice", "wonderland")
    assert credentials.proofIsValid()
    client.verify(final)
    assert serverFirst.startswith(b"r=" + client.nonce.encode())
    assert source.asked == ["alice"]


def test_exchangeWrongPassword() -> None:
    """
    A wrong password gives credentials whose proof is invalid.
    """
    source = Source({"alice": makeVerifier("wonderland")})
    credentials, final, client, _ = _exchange(source, "alice", "looking-glass")
    assert not credentials.proofIsValid()


def test_exchangeServerNonceIsFresh() -> None:
    """
    The server adds a different random part to the nonce every exchange.
    """
    source = Source({"alice": makeVerifier("wonderland")})
    nonces = set()
    for _ in range(3):
        client = ScramSHA256Client("alice", "wonderland", nonce="fixedclientnonce")
        exchange = ScramServerExchange(source, SECRET)
        first = _result(exchange.clientFirst(client.first())).decode()
        nonce = first.split(",")[0][2:]
        assert nonce.startswith("fixedclientnonce")
        assert len(nonce) > len("fixedclientnonce") + 8
        nonces.add(nonce)
    assert len(nonces) == 3


def test_unknownUserLooksLikeKnownUser() -> None:
    """
    An unknown user gets a server-first-message of the same shape (salt
    length, iteration count) as a known one, the same salt every time (so
    asking twice does not reveal that it is made up), and a failing proof.
    """
    source = Source({"alice": makeVerifier("wonderland")})

    def parse(first: bytes) -> dict[str, str]:
        return {part[0]: part[2:] for part in first.decode().split(",")}

    _, _, _, known = _exchange(source, "alice", "x")
    credentials, _, _, unknown1 = _exchange(source, "mallory", "x")
    _, _, _, unknown2 = _exchange(source, "mallory", "y")
    _, _, _, other = _exchange(source, "trudy", "x")
    assert not credentials.proofIsValid()
    k, u1, u2, o = parse(known), parse(unknown1), parse(unknown2), parse(other)
    assert sorted(k) == sorted(u1) == ["i", "r", "s"]
    assert u1["i"] == k["i"]
    assert len(base64.b64decode(u1["s"])) == len(base64.b64decode(k["s"]))
    assert u1["s"] == u2["s"]
    assert u1["s"] != o["s"]


def test_unknownUserWithRightLookingProofFails() -> None:
    """
    Even a proof computed from the made-up salt with any password fails for
    an unknown user (there is no password that works).
    """
    source = Source({})
    for password in ("", "x", "wonderland"):
        credentials, _, _, _ = _exchange(source, "nobody", password)
        assert not credentials.proofIsValid()


def test_saslNameEscapes() -> None:
    """
    A user name with "," and "=" is sent escaped (=2C, =3D) and looked up
    unescaped.
    """
    source = Source({"a,b=c": makeVerifier("pw")})
    credentials, final, client, _ = _exchange(source, "a,b=c", "pw")
    assert source.asked == ["a,b=c"]
    assert credentials.username == "a,b=c"
    assert credentials.proofIsValid()
    client.verify(final)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"p=tls-unique,,n=user,r=abc",  # channel binding asked for
        b"x,,n=user,r=abc",  # bad GS2 flag
        b"n,z=user,n=user,r=abc",  # bad authzid
        b"n,,r=abc,n=user",  # wrong order
        b"n,,n=user",  # no nonce
        b"n,,n=user,r=",  # empty nonce
        b"n,,n=us=ZZer,r=abc",  # bad saslname escape
        b"n,,n=user,r=ab\x01c",  # unprintable nonce
        b"n,,n=\xff\xfe,r=abc",  # not UTF-8
    ],
)
def test_clientFirstMalformed(message: bytes) -> None:
    """
    A malformed client-first-message raises ValueError (or its subclass
    UnicodeDecodeError).
    """
    exchange = ScramServerExchange(Source({"user": _rfcVerifier()}), SECRET)
    with pytest.raises(ValueError):
        exchange.clientFirst(message)


def _clientFinalCases() -> list[Any]:
    return [
        lambda nonce, proof: b"",
        lambda nonce, proof: b"c=biws,r=" + nonce,  # no proof
        lambda nonce, proof: b"c=biws,p=" + proof,  # no nonce
        lambda nonce, proof: b"c=biws,r=" + nonce + b"X,p=" + proof,  # other nonce
        lambda nonce, proof: b"c=eSws,r=" + nonce + b",p=" + proof,  # y,, binding
        lambda nonce, proof: b"c=*notb64*,r=" + nonce + b",p=" + proof,
        lambda nonce, proof: b"c=biws,r=" + nonce + b",p=*notb64*",
        lambda nonce, proof: b"x=biws,r=" + nonce + b",p=" + proof,
    ]


@pytest.mark.parametrize("index", range(len(_clientFinalCases())))
def test_clientFinalMalformed(index: int) -> None:
    """
    A malformed client-final-message (missing proof or nonce, a nonce that
    is not the server's, a channel binding that differs from the GS2
    header, bad base64) raises ValueError.
    """
    exchange = ScramServerExchange(Source({"user": _rfcVerifier()}), SECRET)
    client = ScramSHA256Client("user", "pencil")
    serverFirst = _result(exchange.clientFirst(client.first()))
    good = client.final(serverFirst)
    nonce = good.split(b",")[1][2:]
    proof = good.rsplit(b",p=", 1)[1]
    with pytest.raises(ValueError):
        exchange.clientFinal(_clientFinalCases()[index](nonce, proof))


def test_clientFinalWrongLengthProof() -> None:
    """
    A proof of the wrong length is refused without an exception escaping.
    """
    exchange = ScramServerExchange(Source({"user": _rfcVerifier()}), SECRET)
    client = ScramSHA256Client("user", "pencil")
    serverFirst = _result(exchange.clientFirst(client.first()))
    good = client.final(serverFirst)
    short = good.rsplit(b",p=", 1)[0] + b",p=" + base64.b64encode(b"\0" * 16)
    credentials, _ = exchange.clientFinal(short)
    assert not credentials.proofIsValid()


# -- the file checker ----------------------------------------------------------


class FileCheckerTests(SynchronousTestCase):
    """
    L{ScramFileChecker}: reading the file, bad lines, PLAIN-style passwords,
    SCRAM credentials, reload.
    """

    def setUp(self) -> None:
        self.path = tempDir(self) / "users"
        self.alice = makeVerifier("wonderland")
        self.path.write_text(
            "# users\n\n"
            f"alice:{self.alice.toText()}\n"
            f"bob:{makeVerifier('builder').toText()}\n"
        )

    def test_interfaces(self) -> None:
        """
        The checker is a verifier source and takes passwords and SCRAM
        credentials.
        """
        checker = ScramFileChecker(str(self.path))
        self.assertTrue(verifyObject(IScramVerifierSource, checker))
        self.assertIn(IScramSHA256Credentials, checker.credentialInterfaces)

    def test_verifierLookup(self) -> None:
        """
        scramVerifier gives the stored verifier, or None for a stranger.
        """
        checker = ScramFileChecker(str(self.path))
        self.assertEqual(
            self.successResultOf(checker.scramVerifier("alice")), self.alice
        )
        self.assertIsNone(self.successResultOf(checker.scramVerifier("carol")))

    def test_passwords(self) -> None:
        """
        A right password gives the user name (bytes), a wrong one or an
        unknown user UnauthorizedLogin.
        """
        checker = ScramFileChecker(str(self.path))
        self.assertEqual(
            self.successResultOf(
                checker.requestAvatarId(UsernamePassword(b"bob", b"builder"))
            ),
            b"bob",
        )
        for user, password in ((b"bob", b"Builder"), (b"carol", b"builder")):
            self.failureResultOf(
                checker.requestAvatarId(UsernamePassword(user, password)),
                UnauthorizedLogin,
            )

    def test_scramCredentials(self) -> None:
        """
        Credentials from an exchange against the checker are accepted only
        with a valid proof.
        """
        checker = ScramFileChecker(str(self.path))
        for password, ok in (("wonderland", True), ("nope", False)):
            client = ScramSHA256Client("alice", password)
            exchange = ScramServerExchange(checker, SECRET)
            first = self.successResultOf(exchange.clientFirst(client.first()))
            credentials, _ = exchange.clientFinal(client.final(first))
            d = checker.requestAvatarId(credentials)
            if ok:
                self.assertEqual(self.successResultOf(d), b"alice")
            else:
                self.failureResultOf(d, UnauthorizedLogin)

    def test_badLinesNamed(self) -> None:
        """
        A bad line makes the checker refuse the file, naming the file and
        the line number.
        """
        bad = [
            "nocolon",
            ":" + self.alice.toText(),
            "carol:plaintext-password",
            "carol:SCRAM-SHA-256$4096:xx$yy:zz",
        ]
        for text in bad:
            self.path.write_text(f"# c\nalice:{self.alice.toText()}\n\n{text}\n")
            with self.assertRaises(ValueError) as caught:
                ScramFileChecker(str(self.path))
            message = str(caught.exception)
            self.assertIn("line 4", message)
            self.assertIn(str(self.path), message)

    def test_missingFile(self) -> None:
        """
        A missing file is a ValueError naming it.
        """
        missing = self.path.with_name("missing")
        with self.assertRaises(ValueError) as caught:
            ScramFileChecker(str(missing))
        self.assertIn(str(missing), str(caught.exception))

    def test_reload(self) -> None:
        """
        reload reads the file again: new users appear, removed ones go.
        """
        checker = ScramFileChecker(str(self.path))
        self.path.write_text(f"carol:{makeVerifier('c').toText()}\n")
        checker.reload()
        self.assertIsNotNone(self.successResultOf(checker.scramVerifier("carol")))
        self.assertIsNone(self.successResultOf(checker.scramVerifier("alice")))

    def test_reloadBadFileKeepsOld(self) -> None:
        """
        A reload that fails raises and keeps the users already loaded.
        """
        checker = ScramFileChecker(str(self.path))
        self.path.write_text("garbage line\n")
        with self.assertRaises(ValueError):
            checker.reload()
        self.assertEqual(
            self.successResultOf(checker.scramVerifier("alice")), self.alice
        )


# -- python -m esmtpkit scram ------------------------------------------------


def _runScram(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "esmtpkit", "scram", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_scramCommand(tmp_path: Path) -> None:
    """
    C{python -m esmtpkit scram USER} reads the password from standard input
    and prints a file line that the checker accepts, without the password.
    """
    result = _runScram("dave", stdin="s3cret-Pass\n")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("dave:SCRAM-SHA-256$4096:")
    assert "s3cret-Pass" not in line
    path = tmp_path / "users"
    path.write_text(line + "\n")
    checker = ScramFileChecker(str(path))
    d = checker.requestAvatarId(UsernamePassword(b"dave", b"s3cret-Pass"))
    assert _result(d) == b"dave"


def test_scramCommandIterations() -> None:
    """
    An iteration count may follow the user name; a bad one is a usage
    error.
    """
    result = _runScram("erin", "8192", stdin="pw\n")
    assert result.returncode == 0, result.stderr
    verifier = ScramVerifier.fromText(result.stdout.strip().split(":", 1)[1])
    assert verifier.iterations == 8192
    assert verifier.matches("pw")
    bad = _runScram("erin", "lots", stdin="pw\n")
    assert bad.returncode != 0
    assert "usage" in bad.stderr.lower()


def test_scramCommandRefusesEmptyPassword() -> None:
    """
    An empty password (no input at all, or an empty line) is refused with
    exit status 1 and no verifier: otherwise AUTH with an empty password
    would succeed.
    """
    for stdin in ("", "\n", "\r\n"):
        result = _runScram("bob", stdin=stdin)
        assert result.returncode == 1, (stdin, result)
        assert result.stdout == ""
        assert "empty password" in result.stderr


@pytest.mark.parametrize(
    "user",
    ["a:b", "", " bob", "bob ", "b\tb", "a\nb", "a\rb", "#x", "x\x01y", "x\u2028y"],
    ids=repr,
)
def test_scramCommandRefusesUnstorableUser(user: str) -> None:
    """
    A user name the file cannot hold as given (a colon ends the name,
    lines are stripped and split at line breaks, '#' starts a comment; no
    white space or control characters at all) is refused with exit status
    2 and the usage, and no verifier.
    """
    result = _runScram("--", user, stdin="secret\n")
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "usage: python -m esmtpkit scram" in result.stderr


@given(user=st.text(max_size=40), password=st.text(min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_storableUserNamesRoundTrip(user: str, password: str) -> None:
    """
    Every name checkUserName accepts reads back from a file line as that
    same user, with the password.
    """
    if scram.checkUserName(user) is not None:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "users"
        line = f"{user}:{makeVerifier(password, iterations=4096).toText()}\n"
        path.write_text(line, encoding="utf-8")
        checker = ScramFileChecker(str(path))
        assert list(checker._users) == [user]
        d = checker.requestAvatarId(
            UsernamePassword(user.encode("utf-8"), password.encode("utf-8"))
        )
        assert _result(d) == user.encode("utf-8")


def test_checkUserNameAcceptsOrdinaryNames() -> None:
    """
    Ordinary names, with dots, @, dashes, '=' and ',' (which SCRAM escapes
    on the wire) and non-ASCII letters, are storable.
    """
    for user in ("bob", "alice@example.org", "-dash", "a=b,c", "j\u00f6rg", "a#b"):
        assert scram.checkUserName(user) is None, user


def test_scramCommandHelpAndFlags() -> None:
    """
    --help and -h print the usage on standard output and exit 0 without
    reading a password; an unknown flag exits 2 with the usage; a name
    starting with '-' goes after '--'.
    """
    for flag in ("--help", "-h"):
        result = _runScram(flag, stdin="secret\n")
        assert result.returncode == 0, result
        assert result.stdout.startswith("usage: python -m esmtpkit scram")
        assert "SCRAM-SHA-256$" not in result.stdout
        again = _runScram("bob", flag, stdin="secret\n")
        assert again.returncode == 0 and "SCRAM-SHA-256$" not in again.stdout
    for flag in ("--bogus", "-x"):
        bad = _runScram(flag, "bob", stdin="secret\n")
        assert bad.returncode == 2, bad
        assert bad.stdout == ""
        assert f"unknown option {flag!r}" in bad.stderr
        assert "usage: python -m esmtpkit scram" in bad.stderr
    dashed = _runScram("--", "-dash", stdin="secret\n")
    assert dashed.returncode == 0, dashed
    assert dashed.stdout.startswith("-dash:SCRAM-SHA-256$4096:")


def test_scramCommandIterationsAtLeast4096() -> None:
    """
    Fewer than 4096 iterations (RFC 7677's minimum), or zero, are refused.
    """
    for count in ("0", "1", "4095", "\u0661\u0662"):
        result = _runScram("erin", count, stdin="pw\n")
        assert result.returncode == 2, (count, result)
        assert "at least 4096" in result.stderr


# -- user enumeration by timing -----------------------------------------------


def _medianSeconds(action: Any, runs: int = 25) -> float:
    import statistics
    import time

    action()  # warm up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _assertComparable(known: float, unknown: float) -> None:
    """
    Neither takes ten times longer than the other (the difference to catch
    is the cost of PBKDF2 with 4096 rounds against next to nothing, a
    factor of hundreds).
    """
    assert unknown * 10 > known, f"unknown user {unknown:.6f}s vs known {known:.6f}s"
    assert known * 10 > unknown, f"known user {known:.6f}s vs unknown {unknown:.6f}s"


def test_passwordCheckTimingHidesUnknownUsers(tmp_path: Path) -> None:
    """
    PLAIN/LOGIN against the SCRAM file: checking a wrong password of a
    known user and any password of an unknown user cost about the same
    (otherwise the reply time tells which users exist).
    """
    path = tmp_path / "users"
    path.write_text(f"alice:{makeVerifier('wonderland').toText()}\n")
    checker = ScramFileChecker(str(path))

    def attempt(user: bytes) -> None:
        d = checker.requestAvatarId(UsernamePassword(user, b"wrong"))
        assert isinstance(_result(d).value, UnauthorizedLogin)

    _assertComparable(
        _medianSeconds(lambda: attempt(b"alice")),
        _medianSeconds(lambda: attempt(b"zed")),
    )


def test_scramFirstMessageTimingHidesUnknownUsers() -> None:
    """
    SCRAM: the server-first-message costs about the same to make for a
    known and an unknown user.
    """
    source = Source({"alice": makeVerifier("wonderland")})

    def first(user: str) -> None:
        exchange = ScramServerExchange(source, SECRET)
        _result(exchange.clientFirst(ScramSHA256Client(user, "x").first()))

    _assertComparable(
        _medianSeconds(lambda: first("alice")), _medianSeconds(lambda: first("zed"))
    )
