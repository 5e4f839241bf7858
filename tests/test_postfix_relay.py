"""
A private Postfix (L{tests.postfix.PrivatePostfix}) relays to C{twistd
esmtpkit}: a message submitted to Postfix's smtpd lands once, intact, in
esmtpkit's Maildir; a recipient that esmtpkit refuses is bounced by
Postfix; mail for a server that is down waits in the deferred queue until
it is flushed. Without Postfix the harness fails the test (no skip).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esmtpkit.handlers import Maildir
from esmtpkit.reply import HookResult
from esmtpkit.session import Params

from .helpers import (
    LOOPBACK,
    PROJECT_ROOT,
    TwistdServer,
    freePort,
    maildirFiles,
    splitReceived,
)
from .postfix import DEFAULT_SENDER, PrivatePostfix, postfixCommand

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: relayed by Postfix\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a dotted line\r\n"
    b"..\r\n"
    b"\xe2\x82\xac 8-bit line\r\n"
)
REFUSED = "nobody@example.org"


class RefusingMaildir(Maildir):
    """
    The Maildir handler, except that RCPT to L{REFUSED} gets 550 5.1.1.
    """

    def RCPT(self, recipient: str, params: Params) -> HookResult:
        if recipient.lower() == REFUSED:
            return (550, "5.1.1 No such mailbox here")
        return super().RCPT(recipient, params)


def _esmtpkit(
    tmp_path: Path, *options: str, port: int | None = None
) -> Iterator[tuple[int, Path]]:
    """
    Run C{twistd esmtpkit} (this checkout on PYTHONPATH, for handlers of
    the tests) on loopback port C{port} (or a free one) with a Maildir in
    C{tmp_path}.
    """
    port = port or freePort()
    maildir = tmp_path / "Maildir"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
    )
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
    ]
    args += ["--maildir", str(maildir), *options]
    with TwistdServer(args, cwd=tmp_path, port=port, env=env):
        yield port, maildir


@pytest.fixture
def esmtpkitServer(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """
    C{twistd esmtpkit} with the default Maildir handler: (port, Maildir).
    """
    yield from _esmtpkit(tmp_path)


@pytest.fixture
def refusingServer(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """
    C{twistd esmtpkit} with L{RefusingMaildir}: (port, Maildir).
    """
    yield from _esmtpkit(tmp_path, "--handler", f"{__name__}.RefusingMaildir")


def test_relayedIntoMaildir(
    privatePostfix: Callable[..., PrivatePostfix],
    esmtpkitServer: tuple[int, Path],
) -> None:
    """
    Postfix relays a message for example.org to esmtpkit (C{status=sent});
    esmtpkit's Maildir holds it exactly once: esmtpkit's Received header,
    Postfix's Received header with the queue ID, then the message as it
    was submitted. Postfix's queue is empty afterwards.
    """
    port, maildir = esmtpkitServer
    postfix = privatePostfix(f"smtp:[{LOOPBACK}]:{port}")
    submitted = postfix.submit(MESSAGE)
    assert submitted.rcpt == {"bob@example.org": (250, "2.1.5 Ok")}
    assert submitted.data is not None and submitted.data[0] == 250
    assert submitted.queueId is not None

    delivery = postfix.deliveryStatus("bob@example.org", submitted.queueId)
    assert (delivery.status, delivery.dsn) == ("sent", "2.0.0"), delivery
    assert delivery.relay == f"{LOOPBACK}[{LOOPBACK}]:{port}"
    assert delivery.text.startswith("250 2.0.0 Message accepted for delivery")

    files = maildirFiles(maildir, "new")
    assert len(files) == 1, files
    ours, rest = splitReceived(files[0].read_bytes())
    assert b"by " in ours and b"postfix.test" in ours
    theirs, body = splitReceived(rest)
    assert b"by postfix.test (Postfix) with ESMTP id " + submitted.queueId.encode() in (
        theirs.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    ), theirs
    assert body == MESSAGE
    assert maildirFiles(maildir, "tmp") == []
    assert len(postfix.deliveries("bob@example.org")) == 1
    assert postfix.queueIds() == []


def test_refusedRecipientBounced(
    privatePostfix: Callable[..., PrivatePostfix],
    refusingServer: tuple[int, Path],
) -> None:
    """
    esmtpkit refuses one of two recipients with 550: Postfix logs
    C{status=bounced} with esmtpkit's reply for it, delivers to the other,
    and discards its bounce to the test sender at once.
    """
    port, maildir = refusingServer
    postfix = privatePostfix(f"smtp:[{LOOPBACK}]:{port}")
    submitted = postfix.submit(MESSAGE, ["bob@example.org", REFUSED])
    assert submitted.data is not None and submitted.data[0] == 250
    assert submitted.queueId is not None

    refused = postfix.deliveryStatus(REFUSED, submitted.queueId)
    assert (refused.status, refused.dsn) == ("bounced", "5.1.1"), refused
    assert "said: 550 5.1.1 No such mailbox here" in refused.text
    assert "in reply to RCPT TO command" in refused.text
    sent = postfix.deliveryStatus("bob@example.org", submitted.queueId)
    assert sent.status == "sent", sent

    bounce = postfix.deliveryStatus(DEFAULT_SENDER)
    assert (bounce.agent, bounce.status, bounce.text) == (
        "discard",
        "sent",
        "sender.test",
    ), bounce
    assert len(maildirFiles(maildir, "new")) == 1
    postfix.waitForLog(rf"{bounce.queueId}: removed$")
    assert postfix.queueIds() == []


def test_deferredUntilFlushed(
    privatePostfix: Callable[..., PrivatePostfix], tmp_path: Path
) -> None:
    """
    While nothing listens on esmtpkit's port, Postfix defers the message
    (C{status=deferred}, in the deferred queue with the reason); with retries
    five minutes apart, C{flush} after esmtpkit started delivers it at once.
    """
    port = freePort()
    slow = {"queue_run_delay": "300s", "minimal_backoff_time": "300s"}
    postfix = privatePostfix(f"smtp:[{LOOPBACK}]:{port}", extra=slow)
    postfix.postconf("-e", "maximal_backoff_time = 300s", reload=True)
    submitted = postfix.submit(MESSAGE)
    assert submitted.queueId is not None
    deferred = postfix.deliveryStatus("bob@example.org", final=False)
    assert (deferred.status, deferred.dsn) == ("deferred", "4.4.1"), deferred
    assert "Connection refused" in deferred.text

    deadline = time.monotonic() + 10
    while postfix.queueIds("deferred") != [submitted.queueId]:
        assert time.monotonic() < deadline, postfix.mailq()
        time.sleep(0.05)
    [entry] = postfix.mailq()
    assert entry["sender"] == DEFAULT_SENDER
    assert entry["recipients"] == [
        {
            "address": "bob@example.org",
            "delay_reason": deferred.text,
        }
    ]

    for _ in _esmtpkit(tmp_path, port=port):
        postfix.flush()
        sent = postfix.deliveryStatus("bob@example.org", submitted.queueId)
        assert sent.status == "sent", sent
        assert len(maildirFiles(tmp_path / "Maildir", "new")) == 1
    assert postfix.queueIds() == []


def test_noPostfixFailsLoudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without the Postfix commands, the harness raises AssertionError (the
    test fails) with a message that says what is missing and how to get it.
    """
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(AssertionError, match="Postfix is not installed"):
        postfixCommand("postfix")
    with pytest.raises(AssertionError, match=r"\.ci/run installs it"):
        PrivatePostfix()
