"""
L{WebhookClient}: posts spooled messages to one HTTP(S) endpoint with
treq, signed, and turns its answer into the SMTP reply (for L{Webhook
<esmtpkit.handlers.Webhook>}).
"""

from __future__ import annotations

import time
from typing import IO, Any

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web import client as webClient
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from ..reply import Reply
from .signature import ENVELOPE_HEADER, SIGNATURE_HEADER, signer

__all__ = ["DEFAULT_REJECT_STATUS", "DEFAULT_TIMEOUT", "WebhookClient"]

DEFAULT_TIMEOUT = 30.0
DEFAULT_REJECT_STATUS = 422
_TEXT_LIMIT = 1024
_SHOWN_LIMIT = 200


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
