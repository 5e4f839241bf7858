"""
L{Webhook}: post each message to an HTTP(S) endpoint with treq, streamed
from a spool file, signed; the endpoint's answer is the reply.

See docs/handlers.md, "Webhook", for the request and the replies.
"""

from __future__ import annotations

import json
import tempfile
import time
from typing import IO, Any

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.web import client as webClient
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from ..handler import ESMTPHandler
from ..reply import HookResult, Reply
from ..session import Params, Session
from .options import HandlerOptions, positiveFloat, positiveInt
from .signature import ENVELOPE_HEADER, SIGNATURE_HEADER, signer, verifySignature

__all__ = [
    "Webhook",
    "WebhookClient",
    "WebhookOptions",
    "envelopeOf",
    "verifySignature",
]

DEFAULT_TIMEOUT = 30.0
DEFAULT_REJECT_STATUS = 422
DEFAULT_MAX_ENVELOPE = 8192
_TEXT_LIMIT = 1024
_SHOWN_LIMIT = 200

TOO_MANY = Reply(452, "Too many recipients for one delivery", enhanced="4.5.3")


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


def _dumps(value: Any) -> str:
    # ASCII only, one line: fit for an HTTP header whatever the addresses.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


class _FirstBytes(Protocol):
    """
    Collects the first bytes of a response body (the rest is let go).
    """

    def __init__(self, limit: int) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._limit = limit
        self._data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        if len(self._data) < self._limit:
            self._data += data[: self._limit - len(self._data)]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(bytes(self._data))


def _safeText(body: bytes) -> str | None:
    """
    The endpoint's text, if fit to show a client: the first line, ASCII,
    printable, short.
    """
    try:
        text = body.decode("ascii").strip().splitlines()[0].strip()
    except (UnicodeDecodeError, IndexError):
        return None
    if not text or len(text) > _SHOWN_LIMIT or not text.isprintable():
        return None
    return text


def _trustRoot(caFile: str | None) -> Any:
    if caFile is None:
        return None
    from twisted.internet import ssl

    try:
        with open(caFile, "rb") as file:
            data = file.read()
        # Every certificate of the file (a bundle may hold several).
        pems = [
            b"-----BEGIN CERTIFICATE-----" + part
            for part in data.split(b"-----BEGIN CERTIFICATE-----")[1:]
        ]
        if not pems:
            raise ValueError("no certificate in it")
        certificates = [ssl.Certificate.loadPEM(pem) for pem in pems]
    except OSError as e:
        raise ValueError(f"ca-file {caFile}: {e.strerror}") from None
    except Exception as e:
        raise ValueError(f"ca-file {caFile}: not PEM certificates ({e})") from None
    if len(certificates) == 1:
        return certificates[0]
    return ssl.trustRootFromCertificates(certificates)


class WebhookClient:
    """
    Delivers messages to one endpoint; one is shared by every connection
    of a server (its connection pool too).

    @ivar url: the endpoint.
    @ivar timeout: seconds for a whole delivery (connecting, sending the
        message, the response).
    @ivar rejectStatus: the HTTP status meaning "refuse this message"
        (550); any other non-2xx status is a temporary failure (451).
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        timeout: float = DEFAULT_TIMEOUT,
        rejectStatus: int = DEFAULT_REJECT_STATUS,
        reactor: Any = None,
        caFile: str | None = None,
    ) -> None:
        """
        @param caFile: a PEM file of the CA certificate(s) to trust for an
            C{https://} endpoint, instead of the system's trust store.
        @raise ValueError: a bad URL, no secret, or a C{caFile} that cannot
            be read.
        """
        try:
            import treq.client
        except ImportError:
            raise ValueError(
                "the Webhook handler needs treq: pip install 'esmtpkit[webhook]'"
            ) from None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url {url!r} is not an http:// or https:// URL")
        if not secret:
            raise ValueError("a secret is needed to sign requests")
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self.secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self.timeout = timeout
        self.rejectStatus = rejectStatus
        self.reactor = reactor
        self.pool = webClient.HTTPConnectionPool(reactor, persistent=True)
        policy = webClient.BrowserLikePolicyForHTTPS(_trustRoot(caFile))
        agent = webClient.Agent(reactor, policy, connectTimeout=timeout, pool=self.pool)
        self._http = treq.client.HTTPClient(agent)

    def close(self) -> Deferred[None]:
        """
        Close the pooled connections.
        """
        return self.pool.closeCachedConnections()

    def deliver(
        self, spool: IO[bytes], envelope: str, transactionId: str = ""
    ) -> Deferred[Reply]:
        """
        Post the message in C{spool} with C{envelope} (JSON text); the
        Deferred fires with the reply to give the client. Cancelling it
        cancels the request.
        """
        timestamp = int(time.time())
        signed = deferToThread(self._sign, spool, timestamp, envelope)
        signed.addCallback(self._post, spool, envelope, timestamp)
        signed.addCallback(self._answered, transactionId)
        # Cancelling a request fails it with ResponseNeverReceived or the
        # like, not CancelledError: remember whether the deadline did it.
        late: list[bool] = []

        def expire() -> None:
            late.append(True)
            signed.cancel()

        deadline = self.reactor.callLater(self.timeout, expire)

        def settled(result: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            if late and isinstance(result, Failure):
                return Reply(451, "Delivery endpoint timed out", enhanced="4.4.2")
            return result

        signed.addBoth(settled)
        signed.addErrback(self._failed)
        return signed

    def _sign(self, spool: IO[bytes], timestamp: int, envelope: str) -> str:
        # In a thread: reads the whole spool once.
        mac = signer(self.secret, timestamp, envelope)
        spool.seek(0)
        while chunk := spool.read(1 << 16):
            mac.update(chunk)
        spool.seek(0)
        return f"t={timestamp},v1={mac.hexdigest()}"

    def _post(
        self, signature: str, spool: IO[bytes], envelope: str, timestamp: int
    ) -> Deferred[Any]:
        headers = Headers(
            {
                "Content-Type": ["message/rfc822"],
                "User-Agent": ["esmtpkit webhook"],
                ENVELOPE_HEADER: [envelope],
                SIGNATURE_HEADER: [signature],
            }
        )
        return self._http.post(
            self.url,
            data=FileBodyProducer(spool, readSize=1 << 16),
            headers=headers,
            allow_redirects=False,
            unbuffered=True,
            reactor=self.reactor,
        )

    def _answered(self, response: Any, transactionId: str) -> Deferred[Reply]:
        code = response.code
        reader = _FirstBytes(_TEXT_LIMIT)
        response.deliverBody(reader)
        return reader.done.addCallback(
            lambda body: self._reply(code, body, transactionId)
        )

    def _reply(self, code: int, body: bytes, transactionId: str = "") -> Reply:
        if 200 <= code < 300:
            queued = f" as {transactionId}" if transactionId else ""
            return Reply(
                250, f"Message accepted for delivery{queued}", enhanced="2.0.0"
            )
        text = _safeText(body)
        if code == self.rejectStatus:
            return Reply(
                550,
                text or f"Message refused by the endpoint (HTTP {code})",
                enhanced="5.7.1",
            )
        return Reply(
            451,
            f"Delivery endpoint failed (HTTP {code}), try again later",
            enhanced="4.3.0",
        )

    def _failed(self, failure: Failure) -> Reply:
        if failure.check(CancelledError):
            return failure  # type: ignore[return-value]  # cancelled from above
        if failure.check(
            netError.ConnectError,
            netError.ConnectionLost,
            netError.ConnectionDone,
            netError.DNSLookupError,
            webClient.ResponseFailed,
            webClient.RequestTransmissionFailed,
            webClient.ResponseNeverReceived,
        ):
            return Reply(451, "Delivery endpoint unreachable", enhanced="4.4.1")
        return failure  # type: ignore[return-value]  # a bug: logged, 451 4.3.0


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
        spool = self._spool
        assert spool is not None
        spool.flush()
        transaction = self.session.transaction
        assert transaction is not None
        envelope = envelopeOf(self.session)
        envelope["size"] = transaction.size
        delivery = self.client.deliver(spool, _dumps(envelope), transaction.id)
        self._delivery = delivery
        return delivery.addBoth(self._delivered)

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
