"""
A real MTA drives esmtpkit's milter face: a private Postfix
(L{tests.postfix.PrivatePostfix}) with C{smtpd_milters} pointing at
C{twistd esmtpkit -p milter:tcp:...} running L{PolicyMilter}, relaying to a
second C{twistd esmtpkit} with the Maildir handler. What the client hears
from Postfix, what Postfix logs and what lands in the Maildir show that
every verdict and every modification went through.
"""

from __future__ import annotations

import os
import re
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import LOOPBACK, PROJECT_ROOT, TwistdServer, freePort, maildirFiles
from .milterhandlers import (
    ADDED_RECIPIENT,
    BUSY_SENDER,
    DELETED_RECIPIENT,
    NEW_BODY,
    NEW_SENDER,
    REFUSED_RECIPIENT,
    waitForMilter,
)
from .postfix import DEFAULT_SENDER, PrivatePostfix

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: hello\r\n"
    b"X-Folded: first\r\n"
    b"\tsecond\r\n"
    b"\r\n"
    b"Original body.\r\n"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
    )
    return env


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[int, Path, TwistdServer]]:
    """
    C{twistd esmtpkit} with the Maildir handler: (port, Maildir, server).
    """
    port = freePort()
    maildir = tmp_path / "Maildir"
    folder = tmp_path / "relay"
    folder.mkdir()
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
    ]
    args += ["--maildir", str(maildir), "--log-level", "debug"]
    with TwistdServer(args, cwd=folder, port=port, env=_env()) as server:
        yield port, maildir, server


@pytest.fixture
def milter(tmp_path: Path) -> Iterator[tuple[int, TwistdServer]]:
    """
    C{twistd esmtpkit} serving L{PolicyMilter} as a milter: (port, server).
    """
    port = freePort()
    folder = tmp_path / "milter"
    folder.mkdir()
    args = ["-n", "--pidfile=", "esmtpkit", "--handler"]
    args += ["tests.milterhandlers.PolicyMilter"]
    args += ["-p", f"milter:tcp:{port}:interface={LOOPBACK}", "--log-level", "debug"]
    with TwistdServer(args, cwd=folder, port=None, env=_env()) as server:
        waitForMilter(port, process=server.process)
        yield port, server


def test_policyThroughPostfix(
    privatePostfix: Callable[..., PrivatePostfix],
    relay: tuple[int, Path, TwistdServer],
    milter: tuple[int, TwistdServer],
) -> None:
    relayPort, maildir, relayServer = relay
    milterPort, milterServer = milter
    postfix = privatePostfix(
        f"smtp:[{LOOPBACK}]:{relayPort}", milters=[f"inet:{LOOPBACK}:{milterPort}"]
    )

    # RCPT refused by the milter's RCPT hook: Postfix gives its reply.
    refused = postfix.submit(MESSAGE, [REFUSED_RECIPIENT])
    assert refused.rcpt[REFUSED_RECIPIENT] == (
        550,
        "5.1.1 No such user here (100% sure)",
    ), refused

    # DATA tempfailed for one sender.
    with pytest.raises(smtplib.SMTPDataError) as busy:
        postfix.submit(MESSAGE, sender=BUSY_SENDER)
    assert (busy.value.smtp_code, busy.value.smtp_error) == (
        451,
        b"4.3.2 Busy sender, try later",
    )

    # A Subject refused at HEADER: the whole message, at the end of DATA.
    forbidden = MESSAGE.replace(b"Subject: hello", b"Subject: a forbidden word")
    subject = postfix.submit(forbidden)
    assert subject.data == (554, "5.7.1 Subject refused by policy"), subject

    # Accepted: headers added, inserted and changed, body replaced, sender
    # changed, a recipient added and one deleted.
    accepted = postfix.submit(MESSAGE, ["bob@example.org", DELETED_RECIPIENT])
    assert accepted.data is not None and accepted.data[0] == 250, accepted
    queueId = accepted.queueId
    assert queueId is not None
    for recipient in ("bob@example.org", ADDED_RECIPIENT):
        delivery = postfix.deliveryStatus(recipient, queueId)
        assert delivery.status == "sent", delivery
    assert postfix.deliveries(DELETED_RECIPIENT) == []
    postfix.waitForLog(rf"{queueId}: from=<{NEW_SENDER}>")

    # One copy per recipient (Maildir writes Delivered-To for each).
    copies = [path.read_bytes() for path in maildirFiles(maildir, "new")]
    assert len(copies) == 2
    [data] = [c for c in copies if b"\r\nDelivered-To: bob@example.org\r\n" in c]
    data = data[data.index(b"Received:") :]  # after the delivery headers
    header, _, body = data.partition(b"\r\n\r\n")
    assert body == NEW_BODY
    fields = re.findall(rb"^([!-9;-~]+):", header, re.MULTILINE)
    names = [f.decode().lower() for f in fields]
    # esmtpkit's own Received first (added by the relay), then Postfix's
    # fields with the milter's changes.
    assert names[0] == "received", names
    assert "x-milter-top" in names and "x-milter" in names
    assert b"Subject: changed by the milter\r\n" in header
    assert b"Subject: hello" not in header
    assert b"X-Folded: first\r\n\tsecond\r\n" in header
    session = re.search(rb"X-Milter-Session: (.*)\r\n", header)
    assert session is not None
    text = session.group(1).decode()
    assert "helo=client.test" in text
    assert f"peer={LOOPBACK}" in text
    assert f"id={queueId}" in text
    assert f"from={DEFAULT_SENDER}" in text
    assert f"to=bob@example.org,{DELETED_RECIPIENT}" in text
    # The relay saw the changed envelope.
    log = relayServer.output()
    assert f"from=<{NEW_SENDER}>" in log, log
    # The milter saw the client's header section byte for byte (leading
    # spaces and folding kept), without Postfix's own Received: header;
    # Postfix counts that one all the same, and esmtpkit makes up for it:
    # index 0 is the top of the message's own header section, below it.
    assert "headers=From,To,Subject,X-Folded " in text, text
    headerSize = MESSAGE.index(b"\r\n\r\n") + 4
    assert f"raw={headerSize}" in text, text
    assert names[1:4] == ["received", "x-milter-top", "from"], names
    assert "milter protocol error" not in milterServer.output()
    assert "Traceback" not in milterServer.output()


def test_swaksThroughPostfix(
    privatePostfix: Callable[..., PrivatePostfix],
    relay: tuple[int, Path, TwistdServer],
    milter: tuple[int, TwistdServer],
) -> None:
    """
    swaks, a client of its own, sees the same refusal.
    """
    import subprocess

    relayPort, _, _ = relay
    milterPort, _ = milter
    postfix = privatePostfix(
        f"smtp:[{LOOPBACK}]:{relayPort}", milters=[f"inet:{LOOPBACK}:{milterPort}"]
    )
    result = subprocess.run(
        [
            "swaks",
            "--server",
            LOOPBACK,
            "--port",
            str(postfix.smtpPort),
            "--from",
            DEFAULT_SENDER,
            "--to",
            REFUSED_RECIPIENT,
            "--helo",
            "swaks.test",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "550 5.1.1 No such user here (100% sure)" in result.stdout, result.stdout


def test_smtplibSeesFinalReply(
    privatePostfix: Callable[..., PrivatePostfix],
    relay: tuple[int, Path, TwistdServer],
    milter: tuple[int, TwistdServer],
) -> None:
    """
    Two messages on one SMTP session: the second is not affected by the
    first one's refusal (the milter's message state was reset).
    """
    relayPort, maildir, _ = relay
    milterPort, _ = milter
    postfix = privatePostfix(
        f"smtp:[{LOOPBACK}]:{relayPort}", milters=[f"inet:{LOOPBACK}:{milterPort}"]
    )
    forbidden = MESSAGE.replace(b"Subject: hello", b"Subject: forbidden")
    with smtplib.SMTP(LOOPBACK, postfix.smtpPort, local_hostname="client.test") as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refusal:
            smtp.sendmail(DEFAULT_SENDER, ["bob@example.org"], forbidden)
        assert refusal.value.smtp_code == 554
        smtp.sendmail(DEFAULT_SENDER, ["bob@example.org"], MESSAGE)
    postfix.deliveryStatus("bob@example.org")
    postfix.deliveryStatus(ADDED_RECIPIENT)
    # One message: a copy for bob and one for the recipient the milter added.
    stored = [p.read_bytes() for p in maildirFiles(maildir, "new")]
    assert len(stored) == 2
    assert all(b"\r\n\r\n" + NEW_BODY in data for data in stored)


@pytest.mark.parametrize("version", ["2", "4"])
def test_olderProtocol(
    version: str,
    privatePostfix: Callable[..., PrivatePostfix],
    relay: tuple[int, Path, TwistdServer],
    milter: tuple[int, TwistdServer],
) -> None:
    """
    Postfix set to an older milter protocol (C{milter_protocol = 2}, 4):
    esmtpkit answers with that version, without the steps it lacks; the
    refusal and the changes still go through.
    """
    relayPort, maildir, _ = relay
    milterPort, milterServer = milter
    postfix = privatePostfix(
        f"smtp:[{LOOPBACK}]:{relayPort}",
        milters=[f"inet:{LOOPBACK}:{milterPort}"],
        extra={"milter_protocol": version},
    )
    refused = postfix.submit(MESSAGE, [REFUSED_RECIPIENT])
    assert refused.rcpt[REFUSED_RECIPIENT][0] == 550, refused
    accepted = postfix.submit(MESSAGE)
    assert accepted.data is not None and accepted.data[0] == 250, accepted
    postfix.deliveryStatus(ADDED_RECIPIENT, accepted.queueId)
    # A copy for bob and one for the recipient the milter added.
    stored, _ = maildirFiles(maildir, "new")
    header, _, body = stored.read_bytes().partition(b"\r\n\r\n")
    assert body == NEW_BODY
    assert b"\r\nX-Milter: esmtpkit\r\n" in header + b"\r\n"
    assert b"\r\nX-Milter-Top: first\r\n" in header
    assert "milter protocol error" not in milterServer.output()


REWRITTEN = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <modes.1@sender.test>\r\n"
    b"Subject: original\r\n"
    b"X-Tag: one\r\n"
    b"X-Tag: two\r\n"
    b"X-Folded: first\r\n"
    b"\tsecond\r\n"
    b"\r\n"
    b"Original body.\r\n"
)


def _withoutReceived(data: bytes) -> bytes:
    # The trace headers differ by face (Postfix adds its own); everything
    # else must be the same.
    header, separator, body = data.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    skipping = False
    for line in header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"received:")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + separator + body


def _stored(maildir: Path) -> dict[bytes, bytes]:
    copies: dict[bytes, bytes] = {}
    for path in maildirFiles(maildir, "new"):
        data = _withoutReceived(path.read_bytes())
        found = re.search(rb"^Delivered-To: (.*)\r\n", data, re.MULTILINE)
        assert found is not None, data
        copies[found.group(1)] = data
    return copies


def test_sameMessageStandAloneAndAsMilter(
    tmp_path: Path,
    privatePostfix: Callable[..., PrivatePostfix],
    relay: tuple[int, Path, TwistdServer],
) -> None:
    """
    One handler's modifications give the same stored message, byte for
    byte but for the Received: headers, when esmtpkit applies them itself
    (the handler in a chain before Maildir) and when Postfix applies them
    (the handler as Postfix's milter, Postfix relaying to Maildir).
    """
    recipients = ["bob@example.org", DELETED_RECIPIENT]
    # As a milter.
    relayPort, milterMaildir, _ = relay
    milterPort = freePort()
    folder = tmp_path / "rewriter-milter"
    folder.mkdir()
    args = ["-n", "--pidfile=", "esmtpkit", "--handler"]
    args += ["tests.milterhandlers.Rewriter"]
    args += ["-p", f"milter:tcp:{milterPort}:interface={LOOPBACK}"]
    with TwistdServer(args, cwd=folder, port=None, env=_env()) as milterServer:
        waitForMilter(milterPort, process=milterServer.process)
        postfix = privatePostfix(
            f"smtp:[{LOOPBACK}]:{relayPort}",
            milters=[f"inet:{LOOPBACK}:{milterPort}"],
        )
        accepted = postfix.submit(REWRITTEN, recipients)
        assert accepted.data is not None and accepted.data[0] == 250, accepted
        assert accepted.queueId is not None
        for recipient in ("bob@example.org", ADDED_RECIPIENT):
            delivery = postfix.deliveryStatus(recipient, accepted.queueId)
            assert delivery.status == "sent", delivery
    viaMilter = _stored(milterMaildir)

    # Stand-alone: the same handler in front of Maildir.
    port = freePort()
    standAlone = tmp_path / "standalone"
    folder = tmp_path / "rewriter-smtp"
    folder.mkdir()
    args = ["-n", "--pidfile=", "esmtpkit", "--port"]
    args += [f"tcp:{port}:interface={LOOPBACK}", "--maildir", str(standAlone)]
    args += ["--handler", "tests.milterhandlers.Rewriter,esmtpkit.handlers.Maildir"]
    with TwistdServer(args, cwd=folder, port=port, env=_env()):
        with smtplib.SMTP(LOOPBACK, port, local_hostname="client.test") as smtp:
            refused = smtp.sendmail(DEFAULT_SENDER, recipients, REWRITTEN)
            assert refused == {}
    direct = _stored(standAlone)

    assert sorted(direct) == [b"bob@example.org", ADDED_RECIPIENT.encode()]
    assert direct == viaMilter
    sample = direct[b"bob@example.org"]
    assert sample.startswith(f"Return-Path: <{NEW_SENDER}>\r\n".encode()), sample
    header = sample.partition(b"\r\n\r\n")[0]
    names = re.findall(rb"^([!-9;-~]+):", header, re.MULTILINE)
    assert names[3:] == [
        b"X-Top",
        b"From",
        b"X-Third",
        b"To",
        b"Date",
        b"Message-ID",
        b"Subject",
        b"X-Tag",
        b"X-Folded",
        b"X-Added",
    ], names
    assert b"Subject: rewritten\r\n" in header
    assert b"X-Tag: one\r\n" in header and b"X-Tag: two" not in header
    assert sample.endswith(b"\r\n\r\nNew body, line one.\r\n.dot line\r\nend\r\n")
