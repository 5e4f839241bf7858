"""
L{Webhook}: post each message to an HTTP(S) endpoint with treq, streamed
from a spool file, signed; the endpoint's answer is the reply.

See docs/handlers.md, "Webhook", for the request and the replies.
"""

from __future__ import annotations

import json
import tempfile
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from ..core.rewrite import ModifiedMessage
from ..handler import ESMTPHandler
from ..reply import HookResult, Reply
from ..session import Params, Session
from .options import HandlerOptions, positiveFloat, positiveInt
from .signature import verifySignature
from .webhookclient import DEFAULT_REJECT_STATUS, DEFAULT_TIMEOUT, WebhookClient

__all__ = [
    "Webhook",
    "WebhookClient",
    "WebhookOptions",
    "envelopeOf",
    "verifySignature",
]

DEFAULT_MAX_ENVELOPE = 8192
log = Logger(namespace="esmtpkit")

TOO_MANY = Reply(452, "Too many recipients for one delivery", enhanced="4.5.3")
SPOOL_FAILED = Reply(452, "Insufficient system storage", enhanced="4.3.1")


def envelopeOf(session: Session) -> dict[str, Any]:
    """
    The envelope of C{session}'s open transaction as the webhook sends it
    (JSON, in the C{X-Esmtpkit-Envelope} header).
    """
    transaction = session.transaction
    assert transaction is not None
    tls = session.tls
    identity = session.authenticated
    if isinstance(identity, bytes):
        identity = identity.decode("utf-8", "replace")
    elif identity is not None and not isinstance(identity, str):
        identity = str(identity)
    return {
        "transaction": transaction.id,
        "session": session.id,
        "sender": transaction.sender,
        "mailParams": dict(transaction.mailParams),
        "recipients": [
            {"address": r.address, "params": dict(r.params)}
            for r in transaction.recipients
        ],
        "client": {
            "address": session.peerHost,
            "port": getattr(session.peer, "port", None),
            "helo": session.heloName,
        },
        "tls": None if tls is None else {"version": tls.version, "cipher": tls.cipher},
        "auth": identity,
        "hostname": session.hostname,
        "lmtp": session.lmtp,
    }


def modifiedEnvelope(envelope: dict[str, Any], message: ModifiedMessage) -> None:
    """
    Make C{envelope} (from L{envelopeOf}) the one C{message}'s
    modifications make: its sender, parameters and recipients, and the
    quarantine reason.
    """
    changed = message.envelope
    envelope["sender"] = changed.sender
    envelope["mailParams"] = dict(changed.senderParams)
    envelope["recipients"] = [
        {"address": r.address, "params": dict(r.params)} for r in changed.recipients
    ]
    envelope["quarantine"] = message.quarantine


def _dumps(value: Any) -> str:
    # ASCII only, one line: fit for an HTTP header whatever the addresses.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


class WebhookOptions(HandlerOptions):
    optParameters = [
        ["url", None, None, "The endpoint, http:// or https:// (required)."],
        ["secret", None, None, "The signing secret (or secret-file)."],
        ["secret-file", None, None, "A file whose first line is the secret."],
        [
            "timeout",
            None,
            DEFAULT_TIMEOUT,
            "Seconds for a whole delivery; then 451 4.4.2.",
            positiveFloat,
        ],
        [
            "reject-status",
            None,
            DEFAULT_REJECT_STATUS,
            "The HTTP status by which the endpoint refuses a message (550).",
            positiveInt,
        ],
        [
            "max-envelope",
            None,
            DEFAULT_MAX_ENVELOPE,
            "Largest envelope header in bytes; recipients past it get "
            "452 4.5.3 (the client sends them in another transaction).",
            positiveInt,
        ],
        ["spool-dir", None, None, "Where messages are spooled [default: TMPDIR]."],
        [
            "ca-file",
            None,
            None,
            "PEM file of the CA(s) to trust for an https:// url [default: the "
            "system's trust store].",
        ],
    ]

    def postOptions(self) -> None:
        if self["url"] is None:
            raise UsageError("url=... is required")
        if (self["secret"] is None) == (self["secret-file"] is None):
            raise UsageError("give one of secret=... and secret-file=...")
        if self["secret-file"] is not None:
            try:
                with open(self["secret-file"], encoding="utf-8") as file:
                    self["secret"] = file.readline().strip()
            except OSError as e:
                raise UsageError(f"secret-file: {e.strerror}") from None
        if not 100 <= self["reject-status"] <= 599:
            raise UsageError("reject-status: not an HTTP status")


class Webhook(ESMTPHandler):
    """
    Spools each message to an unnamed temporary file as it streams in, then
    at EOM posts it (C{message/rfc822}, streamed from the file) with its
    envelope and signature to the endpoint, and answers with what the
    endpoint said: 2xx is 250; C{rejectStatus} is 550 (with the endpoint's
    text when it is short printable ASCII); any other status, a timeout or
    a connection error is 451, so the sending server tries again.

    A message with L{modifications
    <esmtpkit.session.Transaction.modifications>} is posted as they make
    it (rendered into a second spool file, in a thread), with the modified
    envelope; a quarantined one is posted too, its envelope's
    C{quarantine} giving the reason (the endpoint decides where it goes).
    """

    Options = WebhookOptions

    def __init__(
        self,
        client: WebhookClient,
        maxEnvelope: int = DEFAULT_MAX_ENVELOPE,
        spoolDir: str | None = None,
    ) -> None:
        """
        @param client: the endpoint (shared by all connections).
        @param maxEnvelope: refuse recipients (452 4.5.3) that would make
            the envelope header longer than this.
        @param spoolDir: where to spool messages (L{None}: the temporary
            directory).
        """
        super().__init__()
        self.client = client
        self.maxEnvelope = maxEnvelope
        self.spoolDir = spoolDir
        self._spool: IO[bytes] | None = None
        self._delivery: Deferred[Reply] | None = None

    @classmethod
    def fromHandlerOptions(cls, options: WebhookOptions) -> Any:
        """
        One L{WebhookClient} for the server.
        """
        client = WebhookClient(
            options["url"],
            options["secret"],
            options["timeout"],
            options["reject-status"],
            caFile=options["ca-file"],
        )
        spoolDir = options["spool-dir"]
        if spoolDir is not None:
            tempfile.TemporaryFile(dir=spoolDir).close()  # fails now if unusable
        maxEnvelope = options["max-envelope"]
        return lambda: cls(client, maxEnvelope, spoolDir)

    def RCPT(self, recipient: str, params: Params) -> HookResult:
        transaction = self.session.transaction
        if transaction is not None and transaction.recipients:
            entry = _dumps({"address": recipient, "params": dict(params)})
            size = len(_dumps(envelopeOf(self.session))) + len(entry) + 1
            if size > self.maxEnvelope:
                return TOO_MANY
        return None

    def DATA(self) -> HookResult:
        self._close()
        self._spool = tempfile.TemporaryFile(dir=self.spoolDir)
        return None

    def EOH(self) -> HookResult:
        transaction = self.session.transaction
        assert self._spool is not None and transaction is not None
        self._spool.write(transaction.rawHeaders)
        return None

    def BODY(self, chunk: bytes) -> HookResult:
        assert self._spool is not None
        self._spool.write(chunk)
        return None

    def EOM(self) -> HookResult:
        """
        Post the message (as its modifications make it, if any) and answer
        with what the endpoint said.
        """
        spool = self._spool
        assert spool is not None
        spool.flush()
        transaction = self.session.transaction
        assert transaction is not None
        envelope = envelopeOf(self.session)
        envelope["quarantine"] = None
        delivery: Deferred[Any]
        if not transaction.modified:
            envelope["size"] = transaction.size
            delivery = self.client.deliver(spool, _dumps(envelope), transaction.id)
        else:
            message = ModifiedMessage(transaction)
            modifiedEnvelope(envelope, message)
            offset = len(transaction.rawHeaders)
            rendering: Deferred[IO[bytes]] = deferToThread(
                self._render, spool, message, offset
            )
            delivery = rendering.addCallback(
                self._postRendered, envelope, transaction.id
            )
            delivery.addErrback(self._renderFailed)
        self._delivery = delivery
        return delivery.addBoth(self._delivered)

    def _render(
        self, spool: IO[bytes], message: ModifiedMessage, bodyOffset: int
    ) -> IO[bytes]:
        # In a thread: the modified message, written to a new spool file.
        rendered = tempfile.TemporaryFile(dir=self.spoolDir)
        try:
            spool.seek(bodyOffset)
            for chunk in message.chunks(spool):
                rendered.write(chunk)
            rendered.flush()
            rendered.seek(0)
        except BaseException:
            rendered.close()
            raise
        return rendered

    def _postRendered(
        self, rendered: IO[bytes], envelope: dict[str, Any], transactionId: str
    ) -> Deferred[Reply]:
        if self._spool is not None:
            self._spool.close()
        self._spool = rendered  # closed with the delivery
        envelope["size"] = rendered.seek(0, 2)
        rendered.seek(0)
        return self.client.deliver(rendered, _dumps(envelope), transactionId)

    def _renderFailed(self, failure: Failure) -> Reply:
        failure.trap(OSError)
        log.warn(
            "session {session}: webhook spool: {error}",
            session=self.session.id,
            error=str(failure.value),
        )
        return SPOOL_FAILED

    def _delivered(self, result: Any) -> Any:
        self._delivery = None
        self._close()
        return result

    def ABORT(self) -> HookResult:
        self._close()
        return None

    def DISCONNECT(self) -> HookResult:
        self._close()
        return None

    def _close(self) -> None:
        if self._delivery is not None:
            return  # the delivery reads the spool; it closes it when done
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()
