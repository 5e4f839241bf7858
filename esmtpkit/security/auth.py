"""
SMTP AUTH (RFC 4954) through L{twisted.cred}: the SASL mechanisms PLAIN,
LOGIN, CRAM-MD5 and SCRAM-SHA-256, and L{Authenticator}, which offers the
ones the portal's checkers can verify and logs clients in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import (
    CramMD5Credentials,
    IUsernameHashedPassword,
    IUsernamePassword,
    UsernamePassword,
)
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred
from zope.interface import Interface, implementer

from .scram import IScramSHA256Credentials, IScramVerifierSource, ScramServerExchange

__all__ = [
    "Authenticator",
    "IdentityRealm",
    "IAuthenticatedIdentity",
    "Challenge",
    "Login",
    "SASLError",
    "makePortal",
]


class IAuthenticatedIdentity(Interface):
    """
    The avatar interface esmtpkit asks the portal for: the avatar is the
    identity (a C{str}) that C{session.authenticated} will hold.
    """


@implementer(IRealm)
class IdentityRealm:
    """
    A realm whose avatar is simply the authenticated user name.
    """

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        identity = (
            avatarId.decode("utf-8", "replace")
            if isinstance(avatarId, bytes)
            else str(avatarId)
        )
        return interfaces[0], identity, lambda: None


def makePortal(checkers: list[ICredentialsChecker]) -> Portal:
    """
    A portal over C{checkers} (for instance those of C{--auth}) whose avatars
    are user names. Where several checkers take the same kind of
    credentials, they are tried in order until one accepts them (a
    L{Portal} alone keeps only the last one).
    """
    byInterface: dict[Any, list[ICredentialsChecker]] = {}
    for checker in checkers:
        for interface in checker.credentialInterfaces:
            byInterface.setdefault(interface, []).append(checker)
    portal = Portal(IdentityRealm())
    for interface, group in byInterface.items():
        portal.registerChecker(
            group[0] if len(group) == 1 else FirstMatchChecker(group, interface),
            interface,
        )
    return portal


@implementer(ICredentialsChecker)
class FirstMatchChecker:
    """
    Tries several checkers in turn; the first to accept the credentials
    wins.
    """

    def __init__(self, checkers: list[ICredentialsChecker], interface: Any) -> None:
        self.checkers = checkers
        self.credentialInterfaces = (interface,)

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        remaining = list(self.checkers)

        def tryNext() -> Deferred[Any]:
            if not remaining:
                return fail(UnauthorizedLogin())
            checker = remaining.pop(0)
            d: Deferred[Any] = maybeDeferred(checker.requestAvatarId, credentials)
            return d.addErrback(refused)

        def refused(failure: Any) -> Any:
            if failure.check(UnauthorizedLogin, UnhandledCredentials):
                return tryNext()
            return failure

        return tryNext()

    def reload(self) -> None:
        """
        Reload the checkers that can.
        """
        for checker in self.checkers:
            reload = getattr(checker, "reload", None)
            if reload is not None:
                reload()


class SASLError(Exception):
    """
    The client's SASL message is malformed.
    """


@dataclass(frozen=True)
class Challenge:
    """
    Send C{data} to the client (as C{334 base64}) and wait for its answer.
    """

    data: bytes


@dataclass(frozen=True)
class Login:
    """
    The exchange is over: check C{credentials}; on success send C{final} (if
    any) as a last challenge before 235.
    """

    credentials: Any
    final: bytes | None = None


class _Plain:
    name = "PLAIN"
    serverFirst = False

    def step(self, response: bytes | None) -> Challenge | Login:
        if response is None:
            return Challenge(b"")
        parts = response.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise SASLError("PLAIN needs authzid NUL authcid NUL password")
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            raise SASLError("acting as another user is not supported")
        return Login(UsernamePassword(authcid, password))


class _Login:
    name = "LOGIN"
    serverFirst = False

    def __init__(self) -> None:
        self._username: bytes | None = None

    def step(self, response: bytes | None) -> Challenge | Login:
        if response is None:
            return Challenge(b"Username:")
        if self._username is None:
            self._username = response
            return Challenge(b"Password:")
        return Login(UsernamePassword(self._username, response))


class _CramMD5:
    name = "CRAM-MD5"
    serverFirst = True

    def __init__(self, hostname: str) -> None:
        self._credentials = CramMD5Credentials(hostname.encode("utf-8", "replace"))
        self._started = False

    def step(self, response: bytes | None) -> Challenge | Login:
        if not self._started:
            if response is not None:
                raise SASLError("CRAM-MD5 takes no initial response")
            self._started = True
            self._credentials.challenge = (
                f"<{os.urandom(8).hex()}.{int(time.time())}@"
                f"{self._credentials.host.decode('utf-8', 'replace')}>"
            ).encode("ascii")
            return Challenge(self._credentials.challenge)
        username, _, digest = (response or b"").rpartition(b" ")
        if not username or len(digest) != 32:
            raise SASLError("CRAM-MD5 needs user SP digest")
        self._credentials.username = username
        self._credentials.response = digest
        return Login(self._credentials)


class _ScramSHA256:
    name = "SCRAM-SHA-256"
    serverFirst = False

    def __init__(self, source: Any, secret: bytes) -> None:
        self._exchange = ScramServerExchange(source, secret)
        self._state = 0

    def step(self, response: bytes | None) -> Challenge | Login | Deferred[Challenge]:
        if response is None:
            return Challenge(b"")
        self._state += 1
        try:
            if self._state == 1:
                return self._exchange.clientFirst(response).addCallback(Challenge)
            if self._state == 2:
                credentials, final = self._exchange.clientFinal(response)
                return Login(credentials, final)
        except (ValueError, UnicodeDecodeError) as e:
            raise SASLError(str(e)) from None
        raise SASLError("unexpected SCRAM message")


def _avatar(result: Any) -> Any:
    return result[1]


class Authenticator:
    """
    Offers the SASL mechanisms that the checkers of C{portal} can verify,
    and logs clients in through it.
    """

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self._secret = os.urandom(32)

    def mechanisms(self) -> list[str]:
        """
        The mechanism names to advertise, strongest first.
        """
        interfaces = set(self.portal.listCredentialsInterfaces())
        names = []
        if self._scramSource() is not None and IScramSHA256Credentials in interfaces:
            names.append("SCRAM-SHA-256")
        if IUsernamePassword in interfaces:
            names += ["PLAIN", "LOGIN"]
        if IUsernameHashedPassword in interfaces:
            names.append("CRAM-MD5")
        return names

    def _scramSource(self) -> Any:
        for checker in self.portal.checkers.values():
            if IScramVerifierSource.providedBy(checker):
                return checker
            if isinstance(checker, FirstMatchChecker):
                for member in checker.checkers:
                    if IScramVerifierSource.providedBy(member):
                        return member
        return None

    def start(self, name: str, hostname: str) -> Any:
        """
        A new exchange for mechanism C{name}, or L{None} if it is not
        offered.
        """
        if name not in self.mechanisms():
            return None
        if name == "PLAIN":
            return _Plain()
        if name == "LOGIN":
            return _Login()
        if name == "CRAM-MD5":
            return _CramMD5(hostname)
        return _ScramSHA256(self._scramSource(), self._secret)

    def login(self, credentials: Any) -> Deferred[Any]:
        """
        Check C{credentials}; the result is the identity, or a failure.
        """
        d: Deferred[Any] = maybeDeferred(
            self.portal.login, credentials, None, IAuthenticatedIdentity
        )
        return d.addCallback(_avatar)
