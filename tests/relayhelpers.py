"""
Helpers for the relay tests: an upstream esmtpkit handler that records what
it was sent and can refuse, stall or cut a session (L{Upstream}, steered by
an L{UpstreamScript}), in-process servers on loopback that every test stops
(L{listen}), a counting handler for the large-message test (L{Counting}),
and the relay's handler factory for a C{twistd} subprocess
(L{relayFromEnvironment}).
"""

from __future__ import annotations

import hashlib
import os
import smtplib
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater

from esmtpkit import ESMTPHandler, Reply
from esmtpkit.handlers import Maildir, Relay
from esmtpkit.reply import HookResult
from esmtpkit.session import Params

from .helpers import LOOPBACK, waitUntil

reactor: Any = _reactor


@dataclass
class UpstreamScript:
    """
    What the upstream handlers of one test do, and what they saw.

    @ivar refuse: recipients refused at RCPT with 550 5.1.1.
    @ivar dataReply: the reply to DATA instead of 354.
    @ivar delay: hook name to seconds it waits before answering.
    @ivar eom: the EOM result instead of the Maildir's.
    """

    refuse: set[str] = field(default_factory=set)
    dataReply: Any = None
    delay: dict[str, float] = field(default_factory=dict)
    eom: Any = None
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    tls: list[Any] = field(default_factory=list)
    identities: list[Any] = field(default_factory=list)
    helos: list[str] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)


class Upstream(Maildir):
    """
    The Maildir handler (no fsync) as an upstream that follows an
    L{UpstreamScript}.
    """

    def __init__(self, path: str, script: UpstreamScript) -> None:
        super().__init__(path, fsync=False)
        self.script = script

    def _later(self, hook: str, result: Any) -> Any:
        seconds = self.script.delay.get(hook)
        if seconds is None:
            return result
        return deferLater(reactor, seconds, lambda: result)

    def CONNECT(self) -> HookResult:
        self.script.connections += 1
        return super().CONNECT()

    def EHLO(self, domain: str) -> HookResult:
        self.script.helos.append(domain)
        self.script.tls.append(self.session.tls)
        return super().EHLO(domain)

    def MAIL(self, sender: str, params: Params) -> HookResult:
        self.script.commands.append(f"MAIL {sender}")
        self.script.identities.append(self.session.authenticated)
        self.script.params.append(dict(params))
        return self._later("MAIL", super().MAIL(sender, params))

    def RCPT(self, recipient: str, params: Params) -> HookResult:
        self.script.commands.append(f"RCPT {recipient}")
        if recipient in self.script.refuse:
            return Reply(550, f"5.1.1 <{recipient}>: no such user here")
        return self._later("RCPT", super().RCPT(recipient, params))

    def DATA(self) -> HookResult:
        self.script.commands.append("DATA")
        if self.script.dataReply is not None:
            return self.script.dataReply
        return super().DATA()

    def EOM(self) -> HookResult:
        transaction = self.session.transaction
        assert transaction is not None
        self.script.ids.append(transaction.id)
        result = super().EOM()
        if self.script.eom is not None:
            result = self.script.eom
        return self._later("EOM", result)

    def RSET(self) -> HookResult:
        self.script.commands.append("RSET")
        return super().RSET()

    def QUIT(self) -> HookResult:
        self.script.commands.append("QUIT")
        return super().QUIT()


async def listen(testCase: Any, factory: Any, tls: bool = False) -> int:
    """
    Serve C{factory} on a free loopback port (port 0, read back) until the
    test ends: then its connections are closed and the port stopped.
    """
    port = reactor.listenTCP(0, factory, interface=LOOPBACK)

    async def stop() -> None:
        try:
            await waitUntil(lambda: not factory.connections, timeout=5)
        except AssertionError:
            for protocol in list(factory.connections):
                protocol.transport.abortConnection()
            await waitUntil(lambda: not factory.connections, timeout=5)
        await port.stopListening()

    testCase.addCleanup(lambda: ensureDeferred(stop()))
    return int(port.getHost().port)


def smtp(port: int, timeout: float = 20.0) -> smtplib.SMTP:
    """
    An smtplib client of 127.0.0.1:C{port} after EHLO client.test (call it
    in a thread).
    """
    client = smtplib.SMTP(LOOPBACK, port, local_hostname="client.test", timeout=timeout)
    client.ehlo()
    return client


class Counting(ESMTPHandler):
    """
    Counts the bytes of each message and their SHA-256 (the header section
    as received, then the body), a little slowly, and answers with both:
    C{250 2.0.0 got N bytes sha256 HEX}.
    """

    def DATA(self) -> HookResult:
        self._hash = hashlib.sha256()
        self._size = 0
        return super().DATA()

    def EOH(self) -> None:
        transaction = self.session.transaction
        assert transaction is not None
        self._hash.update(transaction.rawHeaders)
        self._size += len(transaction.rawHeaders)

    def BODY(self, chunk: bytes) -> HookResult:
        self._hash.update(chunk)
        self._size += len(chunk)
        # A little slower than the relay's client: pauses of 2 ms per chunk,
        # so the relay must hold its client back, not buffer.
        return deferLater(reactor, 0.002, lambda: None)

    def EOM(self) -> HookResult:
        return Reply(
            250, f"2.0.0 got {self._size} bytes sha256 {self._hash.hexdigest()}"
        )


def relayFromEnvironment() -> Relay:
    """
    A L{Relay} to 127.0.0.1 on port C{$RELAY_UPSTREAM_PORT}, without a
    C{Received:} header (so the upstream counts the client's bytes).
    """
    return Relay(
        LOOPBACK,
        int(os.environ["RELAY_UPSTREAM_PORT"]),
        tls="off",
        received=False,
        dataTimeout=120,
        commandTimeout=30,
    )
