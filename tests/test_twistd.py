"""
C{twistd esmtpkit} end to end: the plugin is discovered from the installed
package, C{--help} documents the options, the server runs as a subprocess
(with options and with none at all) and delivers into a Maildir, start-up
errors are one clear line, C{--log-level} filters, and swaks can send mail.

Every subprocess server is started in a temporary working directory and
terminated by its PID in a C{finally} (the L{TwistdServer} context manager).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import (
    LOOPBACK,
    TwistdServer,
    freePort,
    maildirFiles,
    runTwistd,
    splitReceived,
)

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"Subject: over twistd\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a dotted line\r\n"
    b"..\r\n"
    b"\xe2\x82\xac 8-bit line\r\n"
)

PLUGIN_PROBE = """
import json
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from zope.interface.verify import verifyObject

found = [p for p in getPlugins(IServiceMaker) if p.tapname == "esmtpkit"]
result = {"count": len(found)}
if found:
    plugin = found[0]
    result["verified"] = verifyObject(IServiceMaker, plugin)
    result["description"] = plugin.description
    options = plugin.options()
    options.parseOptions(["--handler", "esmtpkit.handlers.Sink", "--port", "tcp:0"])
    result["handler"] = options["handler"]
    result["ports"] = options["ports"]
print(json.dumps(result))
"""


def _serve(tmp_path: Path, *options: str, port: int | None = None) -> TwistdServer:
    """
    A twistd server listening on a free loopback port (or C{port}) with
    extra C{options}.
    """
    port = port or freePort()
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
        *options,
    ]
    return TwistdServer(args, cwd=tmp_path, port=port)


def _send(port: int, message: bytes = MESSAGE) -> tuple[int, bytes]:
    """
    Send C{message} with smtplib; return the final reply of DATA.
    """
    with smtplib.SMTP(
        LOOPBACK, port, local_hostname="client.example", timeout=30
    ) as smtp:
        smtp.ehlo()
        assert smtp.mail("alice@example.org")[0] == 250
        assert smtp.rcpt("carol@example.net")[0] == 250
        return smtp.data(message)


def _assertDelivered(maildir: Path, message: bytes = MESSAGE) -> bytes:
    """
    C{maildir} holds exactly one message in new/: a Received: header, then
    exactly C{message}; tmp/ is empty. Returns the Received header.
    """
    files = maildirFiles(maildir, "new")
    assert len(files) == 1, files
    received, rest = splitReceived(files[0].read_bytes())
    assert rest == message
    assert maildirFiles(maildir, "tmp") == []
    return received


def test_pluginDiscoveredFromInstalledPackage(tmp_path: Path) -> None:
    """
    From an unrelated working directory, getPlugins(IServiceMaker) finds
    exactly one plugin named esmtpkit; it provides IServiceMaker and its
    options parse --handler and --port.
    """
    result = subprocess.run(
        [sys.executable, "-c", PLUGIN_PROBE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["count"] == 1
    assert found["verified"] is True
    assert found["description"]
    assert found["handler"] == "esmtpkit.handlers.Sink"
    assert found["ports"] == ["tcp:0"]


def test_helpDocumentsOptions(tmp_path: Path) -> None:
    """
    C{twistd esmtpkit --help} exits 0 and documents every option and the
    default listening port.
    """
    result = runTwistd(["esmtpkit", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for option in (
        "--port",
        "--handler",
        "--hostname",
        "--maildir",
        "--chunk-size",
        "--log-level",
        "--max-message-size",
    ):
        assert option in text, f"{option} missing from --help"
    assert "tcp:2525:interface=127.0.0.1" in text
    assert "Traceback" not in text + result.stderr


def test_deliversIntoMaildir(tmp_path: Path) -> None:
    """
    C{twistd -n esmtpkit --port ... --maildir DIR} (the Maildir handler by
    default) delivers an smtplib message into DIR/new: the Received: header
    first, then the exact bytes; it logs the connection and the accepted
    message (transaction id, sender, recipient count, size) but, at the
    default level, not every reply; SIGTERM stops it cleanly.
    """
    maildir = tmp_path / "mail"
    with _serve(tmp_path, "--maildir", str(maildir)) as server:
        assert server.port is not None
        code, text = _send(server.port)
        assert code == 250
        received = _assertDelivered(maildir)
    # SIGTERM is a clean shutdown: twistd stops in time, without a SIGKILL
    # (it re-raises SIGTERM on itself once stopped, hence -SIGTERM).
    assert server.process is not None
    assert server.process.returncode in (0, -signal.SIGTERM)
    output = server.output()
    assert received.startswith(b"Received: from client.example ([127.0.0.1])")
    transactionId = text.decode().rsplit(" ", 1)[-1]
    assert transactionId.encode() in received
    accepted = [line for line in output.splitlines() if transactionId in line]
    assert accepted, output
    assert any(
        "alice@example.org" in line and f"{len(MESSAGE)}" in line for line in accepted
    ), output
    assert any("127.0.0.1" in line for line in output.splitlines()), output
    # Per-reply lines are debug only: no 354/221 codes at the default level.
    assert not re.search(r"\b(354|221)\b", output), output
    assert "Traceback" not in output


def test_noOptionsAtAll(tmp_path: Path) -> None:
    """
    C{twistd -n esmtpkit} with no options listens on 127.0.0.1:2525 and
    delivers into ./Maildir. If port 2525 is busy this test fails.
    """
    with socket.socket() as probe:
        # SO_REUSEADDR as Twisted sets it: only a listener makes bind fail,
        # not connections of an earlier run lingering in TIME_WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, 2525))
        except OSError as e:
            pytest.fail(
                f"port 2525 on {LOOPBACK} is busy, cannot test the default: {e}"
            )
    with TwistdServer(["-n", "esmtpkit"], cwd=tmp_path, port=2525) as server:
        code, _ = _send(2525)
        assert code == 250
        assert server.process is not None and server.process.poll() is None
        _assertDelivered(tmp_path / "Maildir")
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        (["--handler", "no.such.Module"], ["--handler", "no.such.Module"]),
        (["--handler", "os.path"], ["--handler", "os.path"]),
        (["--handler", "builtins.int"], ["--handler", "builtins.int"]),
        (["--port", "bogus:thing"], ["--port", "bogus:thing"]),
        (["--log-level", "loud"], ["--log-level", "loud"]),
        (["--chunk-size", "abc"], ["--chunk-size", "abc"]),
    ],
)
def test_startupErrors(tmp_path: Path, options: list[str], mentions: list[str]) -> None:
    """
    A bad option makes twistd exit non-zero quickly with one clear line
    naming the option and the bad value, and no Python traceback.
    """
    started = time.monotonic()
    result = runTwistd(["-n", "--pidfile=", "esmtpkit", *options], cwd=tmp_path)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert elapsed < 20
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "no error message at all"
    last = lines[-1]
    for word in mentions:
        assert word in last, f"{word!r} not in the error line {last!r}"
    # The message is a single line: no other line repeats the bad value.
    assert [line for line in lines if mentions[-1] in line] == [last]


def test_logLevelDebugShowsReplies(tmp_path: Path) -> None:
    """
    C{--log-level debug} logs a line per reply (the 354 to DATA and the 221
    to QUIT among them).
    """
    maildir = tmp_path / "mail"
    with _serve(tmp_path, "--maildir", str(maildir), "--log-level", "debug") as server:
        assert server.port is not None
        assert _send(server.port)[0] == 250
        _assertDelivered(maildir)
    output = server.output()
    assert re.search(r"\b354\b", output), output
    assert re.search(r"\b221\b", output), output


def test_logLevelWarnHidesConnections(tmp_path: Path) -> None:
    """
    C{--log-level warn} hides connection, message and reply lines; the
    server still works.
    """
    maildir = tmp_path / "mail"
    with _serve(tmp_path, "--maildir", str(maildir), "--log-level", "warn") as server:
        assert server.port is not None
        code, text = _send(server.port)
        assert code == 250
        _assertDelivered(maildir)
    output = server.output()
    transactionId = text.decode().rsplit(" ", 1)[-1]
    assert transactionId not in output
    assert "127.0.0.1" not in output
    assert "connected" not in output
    assert not re.search(r"\b(354|221)\b", output), output


def test_swaks(tmp_path: Path) -> None:
    """
    swaks sends a message to the twistd server and it lands in the Maildir.
    """
    swaks = shutil.which("swaks")
    assert swaks is not None, "swaks is not installed (apt-get install swaks)"
    maildir = tmp_path / "mail"
    with _serve(tmp_path, "--maildir", str(maildir)) as server:
        result = subprocess.run(
            [
                swaks,
                "--server",
                f"{LOOPBACK}:{server.port}",
                "--to",
                "a@example.org",
                "--from",
                "b@example.org",
            ],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        files = maildirFiles(maildir, "new")
        assert len(files) == 1
    received, rest = splitReceived(files[0].read_bytes())
    assert b"for <a@example.org>" in received
    assert b"This is a test mailing" in rest
    assert maildirFiles(maildir, "tmp") == []


def test_maxMessageSize(tmp_path: Path) -> None:
    """
    C{--max-message-size 1K} is advertised as SIZE 1024; a bigger message
    is refused with 552 and nothing is delivered; a small one still is.
    """
    maildir = tmp_path / "mail"
    with _serve(
        tmp_path, "--maildir", str(maildir), "--max-message-size", "1K"
    ) as server:
        assert server.port is not None
        with smtplib.SMTP(
            LOOPBACK, server.port, local_hostname="client.example", timeout=30
        ) as smtp:
            smtp.ehlo()
            assert smtp.esmtp_features.get("size") == "1024"
            # Leave SIZE= off, so the server must measure the data itself.
            assert smtp.docmd("MAIL FROM:<alice@example.org>")[0] == 250
            assert smtp.rcpt("carol@example.net")[0] == 250
            code, _ = smtp.data(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 40)
            assert code == 552
            assert smtp.docmd("MAIL FROM:<alice@example.org>")[0] == 250
            assert smtp.rcpt("carol@example.net")[0] == 250
            assert smtp.data(MESSAGE)[0] == 250
    _assertDelivered(maildir)


def test_otherHandlerAndSeveralPorts(tmp_path: Path) -> None:
    """
    C{--handler esmtpkit.handlers.Sink} with C{--port} given twice: both
    ports serve, mail is accepted, and no Maildir is created.
    """
    first, second = freePort(), freePort()
    while second == first:
        second = freePort()
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--handler",
        "esmtpkit.handlers.Sink",
        "--port",
        f"tcp:{first}:interface={LOOPBACK}",
        "--port",
        f"tcp:{second}:interface={LOOPBACK}",
    ]
    with TwistdServer(args, cwd=tmp_path, port=first):
        assert _send(first)[0] == 250
        assert _send(second)[0] == 250
    assert not (tmp_path / "Maildir").exists()


class _FakeResource:
    """
    Stands in for the C{resource} module.
    """

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == self.RLIMIT_NOFILE
        self.limits = limits


def test_raiseFileLimit() -> None:
    """
    The soft limit of open files is raised to the hard limit, capped, and
    never lowered.
    """
    from esmtpkit.server.tap import raiseFileLimit

    low = _FakeResource(1024, 4096)
    assert raiseFileLimit(low) == 4096
    assert low.limits == (4096, 4096)
    huge = _FakeResource(1024, _FakeResource.RLIM_INFINITY)
    assert raiseFileLimit(huge, ceiling=65536) == 65536
    assert huge.limits == (65536, -1)
    high = _FakeResource(100000, 200000)
    assert raiseFileLimit(high, ceiling=65536) == 100000
    assert high.limits == (100000, 200000)
