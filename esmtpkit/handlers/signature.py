"""
The signature of a L{Webhook <esmtpkit.handlers.Webhook>} request, and
L{verifySignature} for the receiving end.

The C{X-Esmtpkit-Signature} header is C{t=TIMESTAMP,v1=HEX}: C{TIMESTAMP}
the Unix time of signing, C{HEX} the HMAC-SHA256, keyed with the shared
secret, of

    TIMESTAMP "." ENVELOPE "." BODY

where C{ENVELOPE} is the value of the C{X-Esmtpkit-Envelope} header and
C{BODY} the request body (the raw message), as bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import IO, Any

__all__ = ["SIGNATURE_HEADER", "ENVELOPE_HEADER", "signer", "verifySignature"]

SIGNATURE_HEADER = "X-Esmtpkit-Signature"
ENVELOPE_HEADER = "X-Esmtpkit-Envelope"
_CHUNK = 1 << 16


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def signer(secret: str | bytes, timestamp: int, envelope: str | bytes) -> Any:
    """
    An HMAC object with the timestamp and envelope signed; C{update} it with
    the body, then C{hexdigest()} is the C{v1} value.
    """
    mac = hmac.new(_bytes(secret), digestmod=hashlib.sha256)
    mac.update(b"%d." % timestamp)
    mac.update(_bytes(envelope))
    mac.update(b".")
    return mac


def verifySignature(
    secret: str | bytes,
    signature: str | bytes | None,
    envelope: str | bytes | None,
    body: bytes | Iterable[bytes] | IO[bytes],
    maxAge: float = 300.0,
    now: float | None = None,
) -> bool:
    """
    Whether a webhook request is genuine: its signature header is valid for
    its envelope header and body under C{secret}, and at most C{maxAge}
    seconds old (nor more than that in the future).

        ok = verifySignature(
            SECRET,
            request.getHeader("X-Esmtpkit-Signature"),
            request.getHeader("X-Esmtpkit-Envelope"),
            request.content,  # a file: read in chunks
        )

    The comparison takes the same time whatever the signature
    (L{hmac.compare_digest}); several C{v1=} values (during a change of
    secret on the sender) are each tried.

    @param signature: the C{X-Esmtpkit-Signature} header (L{None} if
        missing: not genuine).
    @param envelope: the C{X-Esmtpkit-Envelope} header.
    @param body: the request body: bytes, an iterable of byte chunks, or a
        binary file (read from its current position to the end).
    @param now: the current Unix time (for tests); L{time.time} by default.
    """
    if signature is None or envelope is None:
        return False
    text = (
        signature.decode("ascii", "replace")
        if isinstance(signature, bytes)
        else signature
    )
    timestamp: int | None = None
    candidates: list[str] = []
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit() and timestamp is None:
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.lower())
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > maxAge:
        return False
    mac = signer(secret, timestamp, envelope)
    if isinstance(body, (bytes, bytearray, memoryview)):
        mac.update(body)
    elif hasattr(body, "read"):
        while chunk := body.read(_CHUNK):  # type: ignore[union-attr]
            mac.update(chunk)
    else:
        for chunk in body:
            mac.update(chunk)
    expected = mac.hexdigest().encode("ascii")
    valid = False
    for candidate in candidates:
        # Every candidate is compared, so the time does not say which matched.
        valid |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    return valid
