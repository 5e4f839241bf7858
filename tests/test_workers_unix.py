"""
C{--workers} on a unix socket: the socket file is the supervisor's. A
worker stopped alone (SIGTERM: it drains and exits, and is restarted) leaves
the file in place, and the server keeps serving on it; the supervisor
removes it when the whole server stops.

The server runs in a temporary directory and is stopped by PID (L{Server});
every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from .helpers import readReplies
from .test_workers import Server, alive, waitFor


def greeted(path: Path) -> bool:
    """
    Whether a connection to the unix socket C{path} gets a 220 (then QUIT).
    """
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            replies, _ = readReplies(sock, 1, 5)
            sock.sendall(b"QUIT\r\n")
            return bool(replies) and replies[0].code == 220
    except OSError:
        return False


def test_workerStoppedAloneKeepsTheSocket(tmp_path: Path) -> None:
    path = tmp_path / "smtp.sock"
    options = ["--workers", "2", "--port", f"unix:{path}"]
    options += ["--handler", "esmtpkit.handlers.Sink"]
    with Server(tmp_path, options, readyPort=None) as server:

        def started(count: int) -> bool:
            return server.output().count("Starting reactor") >= count

        workers = server.waitWorkers(2)
        assert waitFor(lambda: started(2), 20), server.tail()
        assert waitFor(lambda: greeted(path) or None, 10), server.tail()
        victim = min(workers)
        os.kill(victim, signal.SIGTERM)
        assert waitFor(lambda: (not alive(victim)) or None, 10), server.tail()
        assert path.exists(), server.tail()

        def replaced() -> set[int] | None:
            found = server.workers()
            return found if len(found) == 2 and victim not in found else None

        assert waitFor(replaced, 10), server.tail()
        assert waitFor(lambda: started(3), 20), server.tail()
        assert path.exists(), server.tail()
        # Both workers accept on it (the kernel spreads connections).
        assert all(greeted(path) for _ in range(6)), server.tail()
        status = server.stop()
    assert status in (0, -signal.SIGTERM), server.tail()
    assert not path.exists()
