"""
C{python -m esmtpkit}: the server with the options of C{twistd -n
esmtpkit} (twistd's own runner, no pid file), C{-h}/C{--help}, no arguments
for the default server, usage errors in two lines, C{--workers}; the scram
tool as a subcommand (its refusals are in L{tests.test_scram}).

Every server is a subprocess in a temporary directory, stopped by its PID
in a C{finally}; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import (
    LOOPBACK,
    freePort,
    maildirFiles,
    probeSMTP,
    processesIn,
    waitGone,
)


def _run(
    args: Sequence[str], cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esmtpkit", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextmanager
def _server(
    args: Sequence[str], cwd: Path, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """
    C{python -m esmtpkit ARGS} running until it answers SMTP on C{port};
    stopped by its PID (SIGTERM, then SIGKILL) at the end.
    """
    output = open(cwd / "output.txt", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "esmtpkit", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not probeSMTP(port, timeout=1.0):
            assert process.poll() is None, (cwd / "output.txt").read_text()
            assert time.monotonic() < deadline, (cwd / "output.txt").read_text()
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(15)
        output.close()


def test_help(tmp_path: Path) -> None:
    """
    -h and --help print esmtpkit's options under a "python -m esmtpkit"
    usage line, mention the scram subcommand, and exit 0.
    """
    for flag in ("-h", "--help"):
        result = _run([flag], tmp_path)
        assert result.returncode == 0, result.stderr
        text = result.stdout
        assert text.startswith("Usage: python -m esmtpkit [options]\n"), text[:200]
        for option in ("--port", "--handler", "--workers", "--max-message-size"):
            assert option in text
        assert "scram USER" in " ".join(text.split())
        assert "tcp:2525:interface=127.0.0.1" in text
    assert not (tmp_path / "twistd.pid").exists()


def test_usageError(tmp_path: Path) -> None:
    """
    An unknown option or a bad value: exit status 2 and two short lines
    (the error, where the help is), not the whole usage text.
    """
    for args, words in (
        (["--bogus"], "option --bogus not recognized"),
        (["--chunk-size", "abc"], "--chunk-size"),
    ):
        result = _run(args, tmp_path)
        assert result.returncode == 2, result
        lines = result.stderr.splitlines()
        assert len(lines) == 2, result.stderr
        assert lines[0].startswith("python -m esmtpkit: ") and words in lines[0]
        assert "--help" in lines[1]
        assert result.stdout == ""


def test_noArgumentsRunsTheDefaultServer(tmp_path: Path) -> None:
    """
    No arguments: the default server, 127.0.0.1:2525 into ./Maildir, in
    the foreground with the log on standard output and no pid file;
    SIGTERM stops it. If port 2525 is busy this test fails.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, 2525))
        except OSError as e:
            pytest.fail(
                f"port 2525 on {LOOPBACK} is busy, cannot test the default: {e}"
            )
    with _server([], tmp_path, 2525) as process:
        with smtplib.SMTP(LOOPBACK, 2525, timeout=30) as smtp:
            assert (
                smtp.sendmail(
                    "a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nhi\r\n"
                )
                == {}
            )
        assert len(maildirFiles(tmp_path / "Maildir", "new")) == 1
        assert not (tmp_path / "twistd.pid").exists()
    assert process.returncode in (0, -signal.SIGTERM)
    output = (tmp_path / "output.txt").read_text()
    assert "session" in output and "Traceback" not in output


def test_sameOptionsAsTwistd(tmp_path: Path) -> None:
    """
    The options of twistd esmtpkit: --port, --handler, --hostname and
    --max-message-size take effect.
    """
    port = freePort()
    args = [
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
        "--handler",
        "esmtpkit.handlers.Sink",
        "--hostname",
        "mx.cli.test",
        "--max-message-size",
        "2048",
    ]
    with _server(args, tmp_path, port):
        with smtplib.SMTP(LOOPBACK, port, timeout=30) as smtp:
            code, text = smtp.ehlo("client.example")
            assert code == 250
            assert text.startswith(b"mx.cli.test")
            assert smtp.esmtp_features.get("size") == "2048"
    assert not (tmp_path / "Maildir").exists()


def test_workers(tmp_path: Path) -> None:
    """
    --workers 2 runs under python -m esmtpkit too: the server answers, and
    stops with its workers.
    """
    port = freePort()
    args = [
        "--workers",
        "2",
        "--handler",
        "esmtpkit.handlers.Sink",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
    ]
    with _server(args, tmp_path, port) as process:
        assert probeSMTP(port)
        # The parent and its two workers, all in this directory.
        deadline = time.monotonic() + 15
        while len(processesIn(tmp_path)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.pid in processesIn(tmp_path)
        assert len(processesIn(tmp_path)) == 3
    # The workers are gone with the parent.
    assert waitGone(tmp_path) == []
    assert not probeSMTP(port, timeout=0.5)


def test_scramSubcommand(tmp_path: Path) -> None:
    """
    python -m esmtpkit scram USER still prints a verifier line.
    """
    result = _run(["scram", "carol"], tmp_path, stdin="pw-of-carol\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("carol:SCRAM-SHA-256$4096:")
