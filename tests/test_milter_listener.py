"""
The C{milter:} listener kind: parsing, the service's milter factory, and
C{twistd esmtpkit -p milter:...} on TCP and Unix sockets (also with
C{--workers}), which survives a peer that breaks the protocol.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from esmtpkit import ESMTPHandler, ESMTPService
from esmtpkit.milter import wire
from esmtpkit.milter.factory import MilterFactory
from esmtpkit.server.endpoints import splitWire
from esmtpkit.server.workers import listeningDescription

from .helpers import LOOPBACK, TwistdServer, freePort
from .milterhandlers import probeMilter, waitForMilter


def test_splitWire() -> None:
    assert splitWire("milter:tcp:8890:interface=127.0.0.1") == (
        "milter",
        "tcp:8890:interface=127.0.0.1",
    )
    assert splitWire("milter:unix:/run/m.sock") == ("milter", "unix:/run/m.sock")
    assert splitWire("lmtp:unix:/x") == ("lmtp", "unix:/x")
    assert splitWire("tcp:25") == ("smtp", "tcp:25")
    assert listeningDescription("milter:tcp:8890") == "tcp:8890"


def test_serviceFactory() -> None:
    service = ESMTPService(
        ESMTPHandler, ["tcp:0:interface=127.0.0.1", "milter:tcp:0:interface=127.0.0.1"]
    )
    assert isinstance(service.milterFactory, MilterFactory)
    assert service.factories() == [service.factory, service.milterFactory]
    assert service.milterFactory.events is service.factory.events
    assert service.milterFactory.settings.maxConnectionsPerPeer == 0
    plain = ESMTPService(ESMTPHandler, ["tcp:0:interface=127.0.0.1"])
    assert plain.milterFactory is None


def _probeUnix(path: str) -> bool:
    offer = struct.pack("!III", 6, wire.SMFIF_ALL, 0x1FFFFF)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(wire.packet(wire.OPTNEG, offer))
        data = sock.recv(4096)
    return list(wire.PacketReader().feed(data))[0][0] == wire.OPTNEG


def _broken(port: int) -> bytes:
    """
    Send a bad packet (a length over the limit); return what came back
    before the milter closed.
    """
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(struct.pack("!I", 0xFFFFFFF0) + b"B")
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:  # closed at once (abortConnection)
            pass
    return received


def test_twistdTcpAndUnix(tmp_path: Path) -> None:
    port = freePort()
    path = str(tmp_path / "milter.sock")
    args = ["-n", "--pidfile=", "esmtpkit"]
    args += [
        "-p",
        f"milter:tcp:{port}:interface={LOOPBACK}",
        "-p",
        f"milter:unix:{path}",
    ]
    with TwistdServer(args, cwd=tmp_path, port=None) as server:
        waitForMilter(port, process=server.process)
        assert _probeUnix(path)
        assert _broken(port) == b""
        assert probeMilter(port)  # the server goes on
        assert server.process is not None and server.process.poll() is None
        status = server.stop()
    assert status == 0, server.output()
    output = server.output()
    assert "milter protocol error: packet length" in output, output
    assert "Traceback" not in output, output


def test_twistdWorkers(tmp_path: Path) -> None:
    port = freePort()
    args = ["-n", "--pidfile=", "esmtpkit", "--workers", "2"]
    args += ["-p", f"milter:tcp:{port}:interface={LOOPBACK}"]
    with TwistdServer(args, cwd=tmp_path, port=None) as server:
        waitForMilter(port, process=server.process)
        for _ in range(4):
            assert probeMilter(port)
