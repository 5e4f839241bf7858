"""
A 200 MB message through the relay (C{twistd esmtpkit --handler
esmtpkit.handlers.Relay} as a subprocess) to an upstream that counts and
hashes what it gets (L{tests.relayhelpers.Counting}, another subprocess):
the message arrives whole and unchanged, and the relay's peak RSS (VmHWM)
grows by no more than a few MiB over what one small message costs.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

from .helpers import LOOPBACK, PROJECT_ROOT, TwistdServer, freePort, readReplies

MIB = 1024 * 1024
BLOCK_LINES = 10000


def _block() -> tuple[bytes, bytes]:
    """
    One block of the message, as the upstream gets it and as the client
    sends it (dot-stuffed): 10 000 lines of 100 bytes, every seventh
    starting with a dot.
    """
    lines = []
    for number in range(BLOCK_LINES):
        lead = b"." if number % 7 == 0 else b""
        text = lead + b"line %06d " % number
        lines.append(text + b"x" * (98 - len(text)) + b"\r\n")
    plain = b"".join(lines)
    stuffed = b"".join(b"." + line if line[:1] == b"." else line for line in lines)
    return plain, stuffed


def _peakRSS(pid: int) -> int:
    """
    VmHWM of process C{pid}, in bytes.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _send(
    port: int, blocks: int, header: bytes, block: tuple[bytes, bytes]
) -> tuple[str, int, str]:
    """
    Send one message of C{header} and C{blocks} blocks to 127.0.0.1:C{port};
    return the reply to its end, its size and its SHA-256.
    """
    digest = hashlib.sha256(header)
    size = len(header)
    with socket.create_connection((LOOPBACK, port), timeout=120) as sock:
        readReplies(sock, 1, 20)
        for line in (
            b"EHLO client.test",
            b"MAIL FROM:<alice@sender.test>",
            b"RCPT TO:<bob@example.org>",
            b"DATA",
        ):
            sock.sendall(line + b"\r\n")
            [reply], _ = readReplies(sock, 1, 20)
            assert reply.code in (250, 354), (line, reply)
        sock.sendall(header)
        plain, stuffed = block
        for _ in range(blocks):
            sock.sendall(stuffed)
            digest.update(plain)
            size += len(plain)
        sock.sendall(b".\r\n")
        [reply], _ = readReplies(sock, 1, 120)
        sock.sendall(b"QUIT\r\n")
        readReplies(sock, 1, 20)
    return f"{reply.code} {reply.enhanced} {reply.text}", size, digest.hexdigest()


def test_200MBThroughRelay(tmp_path: Path) -> None:
    """
    200 MB, every seventh line dotted: the upstream got exactly the bytes
    sent (its count and hash come back through the relay in the reply),
    and the relay's peak RSS grew by less than 16 MiB over its peak after
    a 1 MB message.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
    )
    upstreamPort, relayPort = freePort(), freePort()
    common = ["-n", "--pidfile=", "esmtpkit", "--max-message-size", "0"]
    (tmp_path / "upstream").mkdir()
    (tmp_path / "relay").mkdir()
    upstream = TwistdServer(
        [
            *common,
            "--port",
            f"tcp:{upstreamPort}:interface={LOOPBACK}",
            "--handler",
            "tests.relayhelpers.Counting",
        ],
        cwd=tmp_path / "upstream",
        port=upstreamPort,
        env=env,
    )
    relay = TwistdServer(
        [
            *common,
            "--port",
            f"tcp:{relayPort}:interface={LOOPBACK}",
            "--hook-timeout",
            "150",
            "--handler",
            "esmtpkit.handlers.Relay",
            *("--handler-option", f"host={LOOPBACK}"),
            *("--handler-option", f"port={upstreamPort}"),
            *("--handler-option", "tls=off"),
            *("--handler-option", "no-received"),
            *("--handler-option", "data-timeout=120"),
        ],
        cwd=tmp_path / "relay",
        port=relayPort,
        env=env,
    )
    header = b"From: alice@sender.test\r\nSubject: big\r\n\r\n"
    block = _block()
    with upstream, relay:
        assert relay.process is not None
        pid = relay.process.pid
        reply, size, digest = _send(relayPort, 1, header, block)
        assert reply == f"250 2.0.0 got {size} bytes sha256 {digest}"
        baseline = _peakRSS(pid)
        reply, size, digest = _send(relayPort, 200, header, block)
        assert size > 200 * 10**6
        assert reply == f"250 2.0.0 got {size} bytes sha256 {digest}"
        peak = _peakRSS(pid)
    assert peak - baseline < 16 * MIB, (baseline / MIB, peak / MIB)
