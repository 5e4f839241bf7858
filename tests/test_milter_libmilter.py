"""
esmtpkit's milter client against a real libmilter milter: the pymilter test
milter (tests/milters/testmilter.py, on Debian's python3-milter) in front of
the Recorder handler in C{twistd esmtpkit --milter ...}. Every reply the
milter can give and every change it can ask is exercised, chosen by the
sender, a recipient, the Subject or the body.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import LOOPBACK, freePort, maildirFiles
from .milterprocs import (
    esmtpkitWithMilters,
    milterLog,
    pymilterProcess,
    queuedId,
    records,
    transact,
)

MESSAGE = (
    b"Subject: hello\r\n"
    b"X-Folded: one\r\n"
    b"\ttwo\r\n"
    b"X-Delete-Me: yes\r\n"
    b"\r\n"
    b"Hello milter.\r\n"
)


class Stack:
    """
    The test milter and esmtpkit in front of it.
    """

    def __init__(
        self, cwd: Path, port: int, log: Path, server: Any, milterPort: int
    ) -> None:
        self.cwd = cwd
        self.port = port
        self.milterPort = milterPort
        self.log = log
        self.server = server

    def send(
        self,
        sender: str,
        recipients: tuple[str, ...] = ("rcpt@example.org",),
        message: bytes = MESSAGE,
        options: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        return transact(self.port, sender, recipients, message, options)

    def record(self, result: dict[str, Any]) -> dict[str, Any]:
        code, text = result["data"]
        assert code == 250, result
        return records(self.cwd)[queuedId(text)]

    def milterSaw(self, mode: str) -> list[dict[str, Any]]:
        return [r for r in milterLog(self.log) if r["mode"] == mode]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cwd = tmp_path_factory.mktemp("milter")
    milter, log = pymilterProcess(cwd)
    with milter:
        server, port = esmtpkitWithMilters(cwd, [f"inet:{LOOPBACK}:{milter.port}"])
        with server:
            yield Stack(cwd, port, log, server, int(milter.port))


def test_continueAndMacros(stack: Stack) -> None:
    """
    A milter that goes on lets the message through with the header it
    adds recorded, and was given Postfix's macros at each stage, the
    ESMTP arguments, and the header fields byte for byte (folded with LF).
    """
    result = stack.send("plain@example.org", options=("BODY=8BITMIME",))
    record = stack.record(result)
    assert record["headers"] == [["add", "X-Test-Milter", "seen", 0]]
    assert bytes.fromhex(record["message"]) == MESSAGE
    (seen,) = stack.milterSaw("plain")
    macros = seen["macros"]
    assert macros["connect"]["j"] == "mx.test.example"
    assert macros["connect"]["{daemon_name}"] == "mx.test.example"
    assert macros["connect"]["{daemon_addr}"] == LOOPBACK
    assert macros["connect"]["{client_addr}"] == LOOPBACK
    assert macros["connect"]["_"] == f"unknown [{LOOPBACK}]"
    assert macros["connect"]["v"].startswith("esmtpkit ")
    assert int(macros["connect"]["{client_port}"]) > 0
    assert seen["connect"][0] == f"[{LOOPBACK}]"
    assert macros["mail"]["i"] == record["id"]
    assert macros["mail"]["{mail_addr}"] == "plain@example.org"
    assert macros["rcpt"]["{rcpt_addr}"] == "rcpt@example.org"
    # Sent at RCPT only because the milter wished for it (SETSYMLIST).
    assert macros["rcpt"]["{daemon_port}"] == str(stack.port)
    assert macros["data"]["i"] == macros["eom"]["i"] == record["id"]
    assert seen["mailArgs"] == ["BODY=8BITMIME"]
    headers = [(bytes.fromhex(n), bytes.fromhex(v)) for n, v in seen["headers"]]
    assert headers == [
        (b"Subject", b"hello"),
        (b"X-Folded", b"one\n\ttwo"),
        (b"X-Delete-Me", b"yes"),
    ]
    assert seen["bodyLength"] == len(b"Hello milter.\r\n")


@pytest.mark.parametrize(
    "sender, code, text",
    [
        ("reject@example.org", 550, b"5.7.1 Command rejected"),
        ("tempfail@example.org", 451, b"4.7.1 Service unavailable - try again later"),
        # The milter's own reply, its doubled % undone as Postfix does.
        ("custom@example.org", 550, b"5.7.1 Go away, 100% sure"),
        ("multiline@example.org", 451, b"4.7.0 first line\n4.7.0 second line"),
    ],
)
def test_refusedAtMail(stack: Stack, sender: str, code: int, text: bytes) -> None:
    result = stack.send(sender)
    assert result["mail"] == (code, text)


def test_refusedRecipients(stack: Stack) -> None:
    """
    A recipient the milter refuses (or tempfails) is refused alone; the
    message goes to the others.
    """
    result = stack.send(
        "plain@example.org",
        ("refuse@example.org", "rcpttemp@example.org", "ok@example.org"),
    )
    assert [code for code, _ in result["rcpt"]] == [550, 451, 250]
    assert result["rcpt"][0][1] == b"5.7.1 Command rejected"
    assert result["rcpt"][1][1].startswith(b"4.7.1 ")
    assert stack.record(result)["recipients"] == ["ok@example.org"]


def test_accept(stack: Stack) -> None:
    """
    Accept at MAIL: the message is taken and the milter is not asked about
    it any more (so it adds no header at EOM).
    """
    record = stack.record(stack.send("accept@example.org"))
    assert record["headers"] == []
    assert [r["event"] for r in stack.milterSaw("accept")] == []


@pytest.mark.parametrize("sender", ["discard@example.org", "eomdiscard@example.org"])
def test_discard(stack: Stack, sender: str) -> None:
    """
    Discard (at MAIL or at EOM): the client is told 250, the handler never
    takes the message.
    """
    before = set(records(stack.cwd))
    result = stack.send(sender)
    code, text = result["data"]
    assert code == 250
    assert queuedId(text) not in records(stack.cwd)
    assert set(records(stack.cwd)) == before


@pytest.mark.parametrize(
    "sender, subject, body, code",
    [
        ("plain@example.org", b"reject me", b"fine\r\n", 550),
        ("plain@example.org", b"hello", b"x BODYREJECT y\r\n", 550),
        ("eomreject@example.org", b"hello", b"fine\r\n", 550),
        ("eomtempfail@example.org", b"hello", b"fine\r\n", 451),
    ],
)
def test_refusedMessage(
    stack: Stack, sender: str, subject: bytes, body: bytes, code: int
) -> None:
    """
    Refused at a header, in the body, or at the end: the message is
    refused after its data and never taken.
    """
    before = set(records(stack.cwd))
    message = b"Subject: " + subject + b"\r\n\r\n" + body
    result = stack.send(sender, message=message)
    assert result["data"][0] == code
    assert set(records(stack.cwd)) == before


def test_everyModification(stack: Stack) -> None:
    """
    Every change a milter can ask becomes a record on the transaction's
    modifications, in order.
    """
    result = stack.send("mods@example.org", ("deleted@example.org", "kept@example.org"))
    record = stack.record(result)
    assert record["headers"] == [
        ["add", "X-Added", "added value", 0],
        ["insert", "X-Inserted", "at the top", 0],
        ["change", "Subject", "changed subject", 1],
        ["change", "X-Delete-Me", None, 1],
    ]
    assert bytes.fromhex(record["body"]) == b"replaced body\r\n"
    assert record["newSender"] == ["new-sender@example.net", {"BODY": "8BITMIME"}]
    assert record["added"] == [
        ["added@example.net", {}],
        ["added-par@example.net", {"NOTIFY": "NEVER"}],
    ]
    assert record["deleted"] == ["deleted@example.org"]
    assert record["quarantine"] == "held by the test milter"


def test_largeBodyInChunks(stack: Stack) -> None:
    """
    A body of 300 KB reaches the milter whole, in chunks the milter
    protocol allows (at most 65,535 octets each).
    """
    body = b"".join(b"%07d " % i + b"x" * 70 + b"\r\n" for i in range(4000))
    record = stack.record(
        stack.send("plain@example.org", message=b"Subject: big\r\n\r\n" + body)
    )
    seen = [r for r in stack.milterSaw("plain") if r["bodyLength"] == len(body)]
    assert len(seen) == 1
    assert seen[0]["bodyChunks"] >= len(body) // 65535 + 1
    assert bytes.fromhex(record["message"]).endswith(body)


def test_skip(stack: Stack) -> None:
    """
    A milter that answers SKIP to a body chunk gets no more of the body,
    but is still asked at the end of the message.
    """
    body = b"y" * 200_000 + b"\r\n"
    record = stack.record(
        stack.send("skip@example.org", message=b"Subject: s\r\n\r\n" + body)
    )
    (seen,) = stack.milterSaw("skip")
    assert seen["bodyChunks"] == 1
    assert record["headers"] == [["add", "X-Test-Milter", "seen", 0]]


def test_abortOnReset(stack: Stack) -> None:
    """
    A transaction ended by RSET ends with SMFIC_ABORT on the milter, and the
    next message on the same connection is a fresh one for it.
    """
    before = len(stack.milterSaw("plain"))
    with smtplib.SMTP(LOOPBACK, stack.port, timeout=30) as client:
        client.ehlo("client.test.example")
        assert client.mail("plain@example.org")[0] == 250
        assert client.rcpt("first@example.org")[0] == 250
        assert client.rset()[0] == 250
        assert client.mail("plain@example.org")[0] == 250
        assert client.rcpt("second@example.org")[0] == 250
        code, text = client.data(MESSAGE)
    assert code == 250
    assert records(stack.cwd)[queuedId(text)]["recipients"] == ["second@example.org"]
    seen = stack.milterSaw("plain")[before:]
    assert [r["event"] for r in seen] == ["abort", "eom"]
    assert [r[0] for r in seen[1]["recipients"]] == ["<second@example.org>"]


def test_progressKeepsSlowMilter(tmp_path: Path) -> None:
    """
    A milter taking 2 s at the end of the message but reporting progress
    every 0.5 s is waited for, though the content timeout is 1 s; one
    taking 2 s without a word gets the default action (tempfail).
    """
    milter, log = pymilterProcess(tmp_path)
    with milter:
        server, port = esmtpkitWithMilters(
            tmp_path,
            [f"inet:{LOOPBACK}:{milter.port}"],
            "--milter-content-timeout",
            "1",
        )
        with server:
            result = transact(port, "slow@example.org", ["a@example.org"], MESSAGE)
            assert result["data"][0] == 250
            stalled = transact(port, "stall@example.org", ["a@example.org"], MESSAGE)
            assert stalled["data"] == (
                451,
                b"4.7.1 Service unavailable - try again later",
            )
            assert "no reply to end of message in 1s" in server.output()
            plain = transact(port, "plain@example.org", ["a@example.org"], MESSAGE)
            assert plain["data"][0] == 250


@pytest.mark.parametrize(
    "action, mail, delivered",
    [
        ("tempfail", (451, b"4.7.1 Service unavailable - try again later"), False),
        ("reject", (550, b"5.7.1 Command rejected"), False),
        ("accept", None, True),
    ],
)
def test_milterDown(
    tmp_path: Path, action: str, mail: tuple[int, bytes] | None, delivered: bool
) -> None:
    """
    No milter listening: the default action answers MAIL (tempfail by
    default), or with accept the mail goes on without the milter.
    """
    options = [] if action == "tempfail" else ["--milter-default-action", action]
    server, port = esmtpkitWithMilters(
        tmp_path, [f"inet:{LOOPBACK}:{freePort()}"], *options
    )
    with server:
        result = transact(port, "plain@example.org", ["a@example.org"], MESSAGE)
        if mail is not None:
            assert result["mail"] == mail
        assert (result["data"] is not None and result["data"][0] == 250) == delivered
        assert bool(records(tmp_path)) == delivered
        assert "milter inet:127.0.0.1" in server.output()


def test_noDelayedAckStall(stack: Stack) -> None:
    """
    libmilter writes a change and the final reply of the end of a message
    as two small packets with Nagle's algorithm on, so the reply waits for
    the ACK of the change; Linux delays that ACK at least 40 ms unless the
    client acknowledges at once (TCP_QUICKACK). 60 messages, each with a
    change, would take 2.4 s or more with the stall.
    """
    count = 60
    with smtplib.SMTP(LOOPBACK, stack.port, timeout=30) as client:
        client.ehlo("client.test.example")
        started = time.monotonic()
        for _ in range(count):
            client.sendmail("plain@example.org", ["a@example.org"], MESSAGE)
        elapsed = time.monotonic() - started
    assert elapsed < count * 0.040, f"{count} messages took {elapsed:.2f}s"


def test_twoMiltersInOrder(tmp_path: Path) -> None:
    """
    Two C{--milter}s, one on a unix socket (Postfix's C{unix:PATH}) and one
    on TCP, are asked in order: both changes are recorded, the first one's
    first; a refusal by the second stops the message though the first let
    it through.
    """
    socketDir = tempfile.mkdtemp(prefix="milter", dir="/tmp")
    try:
        path = os.path.join(socketDir, "m.sock")
        unixMilter, unixLog = pymilterProcess(tmp_path, unixPath=path, passive=True)
        inetMilter, inetLog = pymilterProcess(tmp_path)
        with unixMilter, inetMilter:
            server, port = esmtpkitWithMilters(
                tmp_path, [f"unix:{path}", f"inet:{LOOPBACK}:{inetMilter.port}"]
            )
            with server:
                result = transact(port, "plain@example.org", ["a@example.org"], MESSAGE)
                code, text = result["data"]
                assert code == 250
                record = records(tmp_path)[queuedId(text)]
                assert record["headers"] == [
                    ["add", "X-Test-Milter", "seen", 0],
                    ["add", "X-Test-Milter", "seen", 0],
                ]
                (unixSaw,) = milterLog(unixLog)
                (inetSaw,) = milterLog(inetLog)
                assert unixSaw["macros"]["eom"]["i"] == record["id"]
                assert inetSaw["macros"]["eom"]["i"] == record["id"]
                refused = transact(
                    port, "eomreject@example.org", ["a@example.org"], MESSAGE
                )
                assert refused["data"] == (550, b"5.7.1 Command rejected")
                # The first milter let it through (and saw its end).
                assert [r["mode"] for r in milterLog(unixLog)] == ["plain", "plain"]
                assert [r["mode"] for r in milterLog(inetLog)][-1] == "eomreject"
    finally:
        shutil.rmtree(socketDir, ignore_errors=True)


def test_modificationsIntoMaildir(stack: Stack, tmp_path: Path) -> None:
    """
    With the built-in Maildir behind the milter, every change lands: the
    message is held in the quarantine folder with the milter's reason, once
    per recipient after the milter's deletion and additions, from the new
    sender, with the headers changed and the body replaced.
    """
    maildir = tmp_path / "Maildir"
    server, port = esmtpkitWithMilters(
        tmp_path,
        [f"inet:{LOOPBACK}:{stack.milterPort}"],
        "--maildir",
        str(maildir),
        handler="esmtpkit.handlers.Maildir",
    )
    with server:
        result = transact(
            port,
            "mods@example.org",
            ["deleted@example.org", "kept@example.org"],
            MESSAGE,
        )
    assert result["data"][0] == 250, result
    assert not (maildir / "new").exists() or maildirFiles(maildir, "new") == []
    stored = [p.read_bytes() for p in maildirFiles(maildir / ".Quarantine", "new")]
    delivered = sorted(
        line.split(b": ", 1)[1]
        for data in stored
        for line in data.split(b"\r\n")
        if line.startswith(b"Delivered-To: ")
    )
    assert delivered == [
        b"added-par@example.net",
        b"added@example.net",
        b"kept@example.org",
    ]
    for data in stored:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"X-Esmtpkit-Quarantine: held by the test milter"
        assert b"Return-Path: <new-sender@example.net>" in lines
        received = next(
            i for i, line in enumerate(lines) if line.startswith(b"Received:")
        )
        message = [f for f in lines[received + 1 :] if not f[:1].isspace()]
        assert message == [
            b"X-Inserted: at the top",
            b"Subject: changed subject",
            b"X-Folded: one",
            b"X-Added: added value",
        ]
        assert body == b"replaced body\r\n"
