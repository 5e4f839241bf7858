"""
SCRAM-SHA-256 (RFC 5802, RFC 7677): salted password verifiers, a
L{twisted.cred} checker that reads them from a file, and the server side of
the SASL exchange.

A verifier keeps the salt, the iteration count, StoredKey and ServerKey of a
password; neither the password nor anything that would log in as the user
elsewhere can be read back from it, so a stolen file does not give away
passwords. The same checker also answers PLAIN and LOGIN (it derives the
keys from the password the client sent).

Make a file line with C{python -m esmtpkit scram USER} (the password is read
from the terminal, or from standard input when it is not a terminal).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, Interface, implementer

__all__ = [
    "ScramVerifier",
    "IScramVerifierSource",
    "IScramSHA256Credentials",
    "ScramFileChecker",
    "ScramServerExchange",
    "makeVerifier",
    "checkUserName",
    "DEFAULT_ITERATIONS",
]

DEFAULT_ITERATIONS = 4096  # RFC 7677's minimum


def _normalize(password: str) -> bytes:
    # SASLprep (RFC 4013) maps and normalises with NFKC; NFKC alone agrees
    # with it on every password made of printable characters.
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


@dataclass(frozen=True)
class ScramVerifier:
    """
    What a server stores for one SCRAM-SHA-256 password.
    """

    salt: bytes
    iterations: int
    storedKey: bytes
    serverKey: bytes

    def toText(self) -> str:
        """
        The verifier as text: C{SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey}
        with base64 fields (the layout PostgreSQL uses).
        """
        b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
        return (
            f"SCRAM-SHA-256${self.iterations}:{b64(self.salt)}"
            f"${b64(self.storedKey)}:{b64(self.serverKey)}"
        )

    @classmethod
    def fromText(cls, text: str) -> ScramVerifier:
        """
        Parse L{toText}'s format.

        @raise ValueError: C{text} is not a verifier.
        """
        scheme, _, rest = text.partition("$")
        params, _, keys = rest.partition("$")
        iterations, _, salt = params.partition(":")
        stored, _, server = keys.partition(":")
        if scheme != "SCRAM-SHA-256" or not iterations.isdigit():
            raise ValueError("not a SCRAM-SHA-256 verifier")
        verifier = cls(
            salt=base64.b64decode(salt, validate=True),
            iterations=int(iterations),
            storedKey=base64.b64decode(stored, validate=True),
            serverKey=base64.b64decode(server, validate=True),
        )
        if len(verifier.storedKey) != 32 or len(verifier.serverKey) != 32:
            raise ValueError("SCRAM-SHA-256 keys are 32 bytes")
        return verifier

    def matches(self, password: str) -> bool:
        """
        Whether C{password} is the one this verifier was made from.
        """
        other = makeVerifier(password, self.salt, self.iterations)
        return hmac.compare_digest(other.storedKey, self.storedKey)


def makeVerifier(
    password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> ScramVerifier:
    """
    The SCRAM-SHA-256 verifier of C{password}, with a new random salt unless
    one is given.
    """
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", _normalize(password), salt, iterations)
    clientKey = _hmac(salted, b"Client Key")
    return ScramVerifier(
        salt=salt,
        iterations=iterations,
        storedKey=hashlib.sha256(clientKey).digest(),
        serverKey=_hmac(salted, b"Server Key"),
    )


class IScramVerifierSource(Interface):
    """
    A checker that can hand out SCRAM-SHA-256 verifiers (needed before the
    client proves it knows the password).
    """

    def scramVerifier(username: str) -> Deferred[ScramVerifier | None]:
        """
        The verifier for C{username}, or L{None} if there is no such user.
        """


class IScramSHA256Credentials(Interface):
    """
    The outcome of a SCRAM-SHA-256 exchange, for a checker to accept.
    """

    username = Attribute("The user name the client gave.")

    def proofIsValid() -> bool:
        """
        Whether the client proved it knows the password.
        """


@implementer(ICredentialsChecker, IScramVerifierSource)
class ScramFileChecker:
    """
    Checks passwords against a file of C{user:verifier} lines (see
    L{ScramVerifier.toText}); blank lines and lines starting with C{#} are
    skipped. The file is read when the checker is made, and again by
    L{reload}.
    """

    credentialInterfaces = (IUsernamePassword, IScramSHA256Credentials)

    def __init__(self, path: str) -> None:
        """
        @raise ValueError: the file cannot be read or has a bad line.
        """
        self.path = path
        self._users = self._read()
        self._dummy = makeVerifier(os.urandom(16).hex())

    def _read(self) -> dict[str, ScramVerifier]:
        users: dict[str, ScramVerifier] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise ValueError(f"{self.path}: {e.strerror}") from None
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, colon, text = line.partition(":")
            try:
                if not colon or not user:
                    raise ValueError("expected user:verifier")
                users[user] = ScramVerifier.fromText(text)
            except ValueError as e:
                raise ValueError(f"{self.path} line {number}: {e}") from None
        return users

    def reload(self) -> None:
        """
        Read the file again.
        """
        self._users = self._read()

    def scramVerifier(self, username: str) -> Deferred[ScramVerifier | None]:
        return succeed(self._users.get(username))

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        if IScramSHA256Credentials.providedBy(credentials):
            ok = credentials.proofIsValid()
            username = credentials.username
        else:
            username = _text(credentials.username)
            verifier = self._users.get(username)
            # An unknown user costs the same work as a known one, so that
            # timing does not tell them apart.
            matches = (verifier or self._dummy).matches(_text(credentials.password))
            ok = verifier is not None and matches
        if ok:
            return succeed(username.encode("utf-8"))
        return fail(UnauthorizedLogin())


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@implementer(IScramSHA256Credentials)
class _ScramCredentials:
    def __init__(self, username: str, valid: bool) -> None:
        self.username = username
        self._valid = valid

    def proofIsValid(self) -> bool:
        return self._valid


def _decodeSaslName(name: str) -> str:
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise ValueError("bad saslname")
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramServerExchange:
    """
    The server side of one SCRAM-SHA-256 exchange (without channel
    binding). Feed it the client's messages in order.

    @ivar failed: the reason the exchange failed, or L{None}.
    """

    def __init__(self, source: Any, secret: bytes) -> None:
        """
        @param source: an L{IScramVerifierSource}.
        @param secret: server secret that makes up a salt for unknown users,
            so that they cannot be told from known ones.
        """
        self._source = source
        self._secret = secret
        self._nonce = ""
        self._clientFirstBare = ""
        self._serverFirst = ""
        self._gs2 = ""
        self.username = ""
        self._verifier: ScramVerifier | None = None
        self._known = False

    def clientFirst(self, message: bytes) -> Deferred[bytes]:
        """
        Take the client-first-message; the result is the server-first-message.

        @raise ValueError: the message is malformed or asks for channel
            binding.
        """
        text = message.decode("utf-8")
        flag, _, rest = text.partition(",")
        authzid, _, bare = rest.partition(",")
        if flag not in ("n", "y") or (authzid and not authzid.startswith("a=")):
            raise ValueError("unsupported GS2 header")
        fields = bare.split(",")
        if (
            len(fields) < 2
            or not fields[0].startswith("n=")
            or not fields[1].startswith("r=")
        ):
            raise ValueError("bad client-first-message")
        self.username = _decodeSaslName(fields[0][2:])
        clientNonce = fields[1][2:]
        if not clientNonce or not clientNonce.isprintable() or "," in clientNonce:
            raise ValueError("bad nonce")
        self._gs2 = f"{flag},{authzid},"
        self._clientFirstBare = bare
        self._nonce = clientNonce + base64.b64encode(os.urandom(18)).decode("ascii")

        def gotVerifier(verifier: ScramVerifier | None) -> bytes:
            self._known = verifier is not None
            if verifier is None:
                # A stable made-up verifier, derived without PBKDF2 (which
                # the server did not run for a known user either).
                seed = _hmac(self._secret, self.username.encode("utf-8"))
                verifier = ScramVerifier(
                    salt=seed[:16],
                    iterations=DEFAULT_ITERATIONS,
                    storedKey=_hmac(seed, b"stored"),
                    serverKey=_hmac(seed, b"server"),
                )
            self._verifier = verifier
            self._serverFirst = (
                f"r={self._nonce},s={base64.b64encode(verifier.salt).decode('ascii')}"
                f",i={verifier.iterations}"
            )
            return self._serverFirst.encode("ascii")

        verifier: Deferred[Any] = self._source.scramVerifier(self.username)
        return verifier.addCallback(gotVerifier)

    def clientFinal(self, message: bytes) -> tuple[Any, bytes]:
        """
        Take the client-final-message.

        @return: the credentials to check, and the server-final-message to
            send if they are accepted.
        @raise ValueError: the message is malformed.
        """
        assert self._verifier is not None
        text = message.decode("ascii")
        withoutProof, _, proof = text.rpartition(",p=")
        fields = withoutProof.split(",")
        if not proof or len(fields) < 2:
            raise ValueError("bad client-final-message")
        binding = base64.b64decode(fields[0][2:], validate=True).decode("utf-8")
        if not fields[0].startswith("c=") or binding != self._gs2:
            raise ValueError("channel binding mismatch")
        if fields[1] != "r=" + self._nonce:
            raise ValueError("nonce mismatch")
        clientProof = base64.b64decode(proof, validate=True)
        authMessage = ",".join(
            (self._clientFirstBare, self._serverFirst, withoutProof)
        ).encode("utf-8")
        signature = _hmac(self._verifier.storedKey, authMessage)
        valid = self._known and len(clientProof) == len(signature)
        if valid:
            clientKey = bytes(
                a ^ b for a, b in zip(clientProof, signature, strict=True)
            )
            valid = hmac.compare_digest(
                hashlib.sha256(clientKey).digest(), self._verifier.storedKey
            )
        serverSignature = _hmac(self._verifier.serverKey, authMessage)
        final = b"v=" + base64.b64encode(serverSignature)
        return _ScramCredentials(self.username, valid), final


USAGE = "usage: python -m esmtpkit scram [-h] [--] USER [ITERATIONS]"

_HELP = f"""{USAGE}

Print a line for --auth scram-file:PATH: USER, a colon, and the
SCRAM-SHA-256 verifier (salt, iteration count and keys, not the password)
of a password read from the terminal, or from the first line of standard
input when it is not a terminal. ITERATIONS is the PBKDF2 iteration count,
at least {DEFAULT_ITERATIONS} (the default, RFC 7677's minimum).

USER must be storable in the file: not empty, without ':' (which ends the
name), white space or control characters, and not starting with '#' (a
comment line). An empty password is refused. A USER that starts with '-'
goes after '--'."""


def checkUserName(user: str) -> str | None:
    """
    Why C{user} cannot be a user name of a L{ScramFileChecker} file (one
    C{user:verifier} line, stripped, split at the first colon), or L{None}
    if it can.
    """
    if not user:
        return "the user name is empty"
    if ":" in user:
        return "a user name cannot contain ':' (it ends the name in the file)"
    if user.startswith("#"):
        return "a user name cannot start with '#' (a comment line in the file)"
    for char in user:
        if char.isspace() or not char.isprintable():
            return (
                "a user name cannot contain white space or control characters "
                f"({char!r})"
            )
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:
        return "the user name is not valid UTF-8"
    return None


def _usageError(message: str) -> int:
    print(f"python -m esmtpkit scram: {message}", file=sys.stderr)
    print(USAGE, file=sys.stderr)
    return 2


def main(args: list[str]) -> int:
    """
    C{python -m esmtpkit scram [-h] [--] USER [ITERATIONS]}: print a file
    line for L{ScramFileChecker}.

    @return: the exit status: 0, 1 for a refused password, 2 for bad
        arguments (with the usage on standard error).
    """
    import getpass

    positional: list[str] = []
    options = True
    for arg in args:
        if options and arg == "--":
            options = False
        elif options and arg in ("-h", "--help"):
            print(_HELP)
            return 0
        elif options and arg.startswith("-") and arg != "-":
            return _usageError(f"unknown option {arg!r}")
        else:
            positional.append(arg)
    if not 1 <= len(positional) <= 2:
        return _usageError("expected USER and at most an ITERATIONS count")
    user = positional[0]
    problem = checkUserName(user)
    if problem is not None:
        return _usageError(f"{problem}: {user!r}")
    iterations = DEFAULT_ITERATIONS
    if len(positional) == 2:
        count = positional[1]
        if not (count.isascii() and count.isdigit()) or int(count) < DEFAULT_ITERATIONS:
            return _usageError(
                f"ITERATIONS must be a whole number of at least {DEFAULT_ITERATIONS}:"
                f" {count!r}"
            )
        iterations = int(count)
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {user}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("python -m esmtpkit scram: an empty password is refused", file=sys.stderr)
        return 1
    print(f"{user}:{makeVerifier(password, iterations=iterations).toText()}")
    return 0
