"""
A handler for the milter client tests that takes every message by writing
what it got -- envelope, message bytes, and the changes the milters asked
(C{transaction.modifications}) -- as one JSON file in C{./records} of its
working directory.
"""

from __future__ import annotations

import json
import os
from typing import Any

from esmtpkit import ESMTPHandler
from esmtpkit.reply import HookResult


def _body(source: Any) -> str | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        return source.hex()
    if hasattr(source, "read"):
        return source.read().hex()
    return b"".join(source).hex()


class Recorder(ESMTPHandler):
    def BODY(self, chunk: bytes) -> HookResult:
        self.session.transaction.data.setdefault("body", []).append(chunk)
        return None

    def EOM(self) -> HookResult:
        transaction = self.session.transaction
        assert transaction is not None
        changes = transaction.modifications
        record = {
            "id": transaction.id,
            "sender": transaction.sender,
            "recipients": [r.address for r in transaction.recipients],
            "message": (
                transaction.rawHeaders + b"".join(transaction.data.get("body", []))
            ).hex(),
            "headers": [list(change) for change in changes.headers],
            "body": _body(changes.body),
            "newSender": (
                [changes.sender[0], dict(changes.sender[1])] if changes.sender else None
            ),
            "added": [[a, dict(p)] for a, p in changes.added],
            "deleted": changes.deleted,
            "quarantine": changes.quarantine,
        }
        os.makedirs("records", exist_ok=True)
        path = os.path.join("records", transaction.id + ".json")
        with open(path + ".tmp", "w") as out:
            json.dump(record, out)
        os.rename(path + ".tmp", path)
        return super().EOM()
