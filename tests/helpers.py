"""
Shared helpers for the integration, twistd, Maildir, packaging and chunking
tests: free ports, a twistd subprocess with a bounded readiness wait, blocking
SMTP clients meant to run in a thread, and Maildir inspection.

Every network helper talks to 127.0.0.1 only, and every wait is bounded in
time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater

from esmtpkit.testing import parseReplies

LOOPBACK = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read
    the port, release it).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def twistdExecutable() -> str:
    """
    The C{twistd} script of the Python running the tests.
    """
    candidate = Path(sys.executable).with_name("twistd")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("twistd")
    if found is None:
        raise AssertionError("no twistd script next to the Python running the tests")
    return found


def readReplies(
    sock: socket.socket, count: int, timeout: float = 10.0
) -> tuple[list[Any], bytes]:
    """
    Read from C{sock} until C{count} complete replies have arrived, the peer
    closed, or C{timeout} seconds passed.

    @return: the replies (L{esmtpkit.Reply}) and all raw bytes read.
    """
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        replies, _ = parseReplies(data)
        if len(replies) >= count:
            return replies, data
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return replies, data
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return replies, data
        if not chunk:
            return parseReplies(data)[0], data
        data += chunk


def readUntilClosed(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """
    Read from C{sock} until the peer closes it or C{timeout} seconds pass.

    @return: the bytes read, and whether the peer closed the connection.
    """
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def probeSMTP(port: int, timeout: float = 2.0) -> bool:
    """
    Whether an SMTP server on 127.0.0.1:C{port} answers with a 220 greeting
    (the probe then says QUIT).
    """
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            replies, _ = readReplies(sock, 1, timeout)
            if not replies or replies[0].code != 220:
                return False
            sock.sendall(b"QUIT\r\n")
            readReplies(sock, 1, timeout)
            return True
    except OSError:
        return False


class TwistdServer:
    """
    C{twistd -n ...} as a subprocess in a given working directory, its
    output (stdout and stderr) going to a file there.

    Use as a context manager: the process is always terminated by its PID on
    exit, and waited for with a timeout (then killed).
    """

    def __init__(
        self,
        args: Sequence[str],
        cwd: Path,
        port: int | None,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.args = [twistdExecutable(), *args]
        self.preexec = preexec
        self.cwd = Path(cwd)
        self.port = port
        self.env = env
        self.outputPath = self.cwd / "twistd-output.txt"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, readyTimeout: float = 20.0) -> None:
        """
        Start the process, and (when a port is known) wait until it answers
        SMTP on it; fail with its output if it exits first or is not ready in
        time.
        """
        with open(self.outputPath, "wb") as out:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                preexec_fn=self.preexec,
            )
        if self.port is None:
            return
        deadline = time.monotonic() + readyTimeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"twistd exited with {self.process.returncode} before it was "
                    f"ready:\n{self.output()}"
                )
            if probeSMTP(self.port, timeout=1.0):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"twistd did not answer on port {self.port} within {readyTimeout}s:\n"
            f"{self.output()}"
        )

    def stop(self, timeout: float = 15.0) -> int | None:
        """
        Terminate the process by its PID (SIGTERM, then SIGKILL after
        C{timeout}) and wait for it.

        @return: its exit status.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout)
        return process.returncode

    def output(self) -> str:
        """
        Everything the process wrote so far.
        """
        try:
            return self.outputPath.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> TwistdServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def runTwistd(
    args: Sequence[str], cwd: Path, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd args} to completion (for commands that exit by themselves:
    C{--help}, start-up errors), with a timeout.
    """
    return subprocess.run(
        [twistdExecutable(), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def maildirFiles(path: Path, sub: str) -> list[Path]:
    """
    The files in sub-folder C{sub} (C{new}, C{tmp} or C{cur}) of a Maildir.
    """
    folder = Path(path) / sub
    return sorted(p for p in folder.iterdir() if p.is_file())


DELIVERY_HEADERS = (
    b"X-Esmtpkit-Quarantine:",
    b"Return-Path:",
    b"X-Original-To:",
    b"Delivered-To:",
)


def _fieldEnd(data: bytes, pos: int) -> int:
    # Where the header field starting at pos ends (after its continuations).
    pos = data.index(b"\r\n", pos) + 2
    while data[pos : pos + 1] in (b" ", b"\t"):
        pos = data.index(b"\r\n", pos) + 2
    return pos


def splitDelivery(data: bytes) -> tuple[bytes, bytes]:
    """
    Split a message delivered by the Maildir handler into the delivery
    headers it starts with (C{Return-Path:}, C{X-Original-To:},
    C{Delivered-To:}, a quarantine reason; possibly none) and the rest,
    which starts with the handler's C{Received:} header.
    """
    pos = 0
    while data.startswith(DELIVERY_HEADERS, pos):
        pos = _fieldEnd(data, pos)
    return data[:pos], data[pos:]


def splitReceived(data: bytes) -> tuple[bytes, bytes]:
    """
    Split a delivered message into its leading C{Received:} header (with
    its continuation lines) and the rest; the Maildir handler's delivery
    headers before it, if any, are left out (see L{splitDelivery}).

    @raise AssertionError: the message does not start with C{Received:}.
    """
    data = splitDelivery(data)[1]
    if not data.startswith(b"Received: "):
        raise AssertionError(f"message does not start with Received: {data[:80]!r}")
    pos = _fieldEnd(data, 0)
    return data[:pos], data[pos:]


def tempDir(testCase: Any) -> Path:
    """
    A new temporary directory (outside the working directory) that is
    removed when the trial C{testCase} is cleaned up.
    """
    path = Path(tempfile.mkdtemp(prefix="esmtpkit-test-"))
    testCase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


async def waitUntil(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """
    Let the (real) reactor run until C{predicate()} is true.

    @raise AssertionError: it is still false after C{timeout} seconds.
    """
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, interval, lambda: None)


def processesIn(folder: Path) -> list[int]:
    """
    The live processes whose working directory is C{folder} or below it:
    a test that starts its processes in its own directory finds them all
    this way, daemons and workers included.
    """
    here = os.path.realpath(folder)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:  # gone, or a zombie
            continue
        if cwd == here or cwd.startswith(here + os.sep):
            found.append(int(entry))
    return found


def waitGone(folder: Path, timeout: float = 15.0) -> list[int]:
    """
    Wait until no process runs in C{folder}; return those still there after
    C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = processesIn(folder)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
