"""
Milter processes for the milter client tests (the pymilter test milter,
OpenDKIM) and C{twistd esmtpkit} in front of them; every process is started
and stopped by the test, by its PID, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .helpers import LOOPBACK, PROJECT_ROOT, TwistdServer, freePort

SYSTEM_PYTHON = "/usr/bin/python3"
TEST_MILTER = PROJECT_ROOT / "tests" / "milters" / "testmilter.py"


def waitListening(
    port: int | str,
    process: subprocess.Popen[bytes],
    output: Path,
    timeout: float = 20.0,
) -> None:
    """
    Wait until something accepts connections on 127.0.0.1:C{port} (or on
    the unix socket at path C{port}); fail with C{output} if C{process}
    exits first or time runs out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"milter exited with {process.returncode}:\n{output.read_text()}"
            )
        try:
            if isinstance(port, str):
                with socket.socket(socket.AF_UNIX) as unix:
                    unix.settimeout(1.0)
                    unix.connect(port)
            else:
                with socket.create_connection((LOOPBACK, port), timeout=1.0):
                    pass
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"milter not listening on {port}:\n{output.read_text()}")


def stopProcess(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """
    Stop C{process} by its PID: SIGTERM, then SIGKILL.
    """
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)


class MilterProcess:
    """
    A milter subprocess listening on a loopback port (or a unix socket,
    when C{port} is its path).
    """

    def __init__(self, args: Sequence[str], cwd: Path, port: int | str) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.port = port
        tag = port if isinstance(port, int) else Path(port).name
        self.outputPath = cwd / f"milter-{tag}.out"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MilterProcess:
        with open(self.outputPath, "wb") as out:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            waitListening(self.port, self.process, self.outputPath)
        except BaseException:
            stopProcess(self.process)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        stopProcess(self.process)


def pymilterProcess(
    cwd: Path, unixPath: str | None = None, passive: bool = False
) -> tuple[MilterProcess, Path]:
    """
    The pymilter test milter (not yet started) and the log it writes; on a
    free loopback port, or on the unix socket C{unixPath}; C{passive}, it
    ignores what the sender asks and always goes on.
    """
    if unixPath is None:
        port: int | str = freePort()
        where = f"inet:{port}@{LOOPBACK}"
        log = cwd / "milter-log.jsonl"
    else:
        port = where = unixPath
        where = f"unix:{unixPath}"
        log = cwd / "milter-unix-log.jsonl"
    args = [SYSTEM_PYTHON, str(TEST_MILTER), where, str(log)]
    if passive:
        args.append("passive")
    return MilterProcess(args, cwd, port), log


def milterLog(log: Path) -> list[dict[str, Any]]:
    """
    The test milter's records so far.
    """
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def esmtpkitWithMilters(
    cwd: Path,
    milters: Sequence[str],
    *options: str,
    handler: str = "tests.milterrecorder.Recorder",
) -> tuple[TwistdServer, int]:
    """
    C{twistd esmtpkit} (not yet started) with C{handler} (the test
    Recorder) behind C{milters}, on a free loopback port.
    """
    port = freePort()
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
        "--hostname",
        "mx.test.example",
        "--handler",
        handler,
    ]
    for milter in milters:
        args += ["--milter", milter]
    return TwistdServer([*args, *options], cwd=cwd, port=port, env=env), port


def records(cwd: Path) -> dict[str, dict[str, Any]]:
    """
    The messages the Recorder took, by transaction id.
    """
    folder = cwd / "records"
    if not folder.exists():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def transact(
    port: int,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    mailOptions: Sequence[str] = (),
) -> dict[str, Any]:
    """
    One SMTP transaction, reply by reply: C{{"mail": (code, text), "rcpt":
    [...], "data": (code, text) or None}}; the DATA command's refusal
    stands for the data reply.
    """
    result: dict[str, Any] = {"rcpt": [], "data": None}
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as client:
        client.ehlo("client.test.example")
        result["mail"] = client.mail(sender, list(mailOptions))
        if result["mail"][0] != 250:
            return result
        for recipient in recipients:
            result["rcpt"].append(client.rcpt(recipient))
        if not any(code == 250 for code, _ in result["rcpt"]):
            return result
        try:
            result["data"] = client.data(message)
        except smtplib.SMTPDataError as e:
            result["data"] = (e.smtp_code, e.smtp_error)
    return result


def queuedId(text: bytes) -> str:
    """
    The transaction id in a 250 reply to the end of a message.
    """
    return text.decode().rsplit(" ", 1)[-1]
