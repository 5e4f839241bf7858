"""
Scale-out behind HAProxy: Debian's C{haproxy} on loopback, with a config of
its own in the test's temporary directory, in front of two esmtpkit
instances listening on C{haproxy:tcp:...} and sent C{send-proxy-v2}:

  - both instances get traffic (round robin);
  - each sees the real client (the test connects from 127.0.0.2; HAProxy
    from 127.0.0.1): in the session (the log's C{connected from} line and
    the message line's C{client=}), and in the C{Received:} header;
  - one instance stopped with the drain (SIGTERM) while a transaction is
    open on it and clients keep sending: the open transaction still gets
    its 250 and its message is kept; every message acknowledged with 250 is
    in exactly one Maildir, once; HAProxy's health checks (every 200 ms)
    take the instance out and new connections go to the other.

HAProxy runs in the foreground (C{-db}) and every process is stopped by its
PID at the end; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import LOOPBACK, TwistdServer, freePort, maildirFiles, readReplies
from .test_workers import waitFor

CLIENT = "127.0.0.2"  # the client's own loopback address, not HAProxy's


def haproxyExecutable() -> str:
    found = shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin")
    assert found, "haproxy is not installed (.ci/run installs Debian's)"
    return found


CONFIG = """\
global
    maxconn 200

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # A connection refused by a server that is stopping is tried again,
    # on another server.
    retries 3
    option redispatch 1

frontend smtp
    bind {loopback}:{front}
    default_backend esmtpkit

backend esmtpkit
    balance roundrobin
    option smtpchk HELO haproxy.test
    default-server send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2
    server a {loopback}:{a}
    server b {loopback}:{b}
"""


class HAProxy:
    """
    C{haproxy -db -f CONFIG} in C{folder}, stopped by its PID.
    """

    def __init__(self, folder: Path, config: str) -> None:
        self.config = folder / "haproxy.cfg"
        self.config.write_text(config)
        self.outputPath = folder / "haproxy-output.txt"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        check = subprocess.run(
            [haproxyExecutable(), "-c", "-f", str(self.config)],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.outputPath, "wb") as out:
            self.process = subprocess.Popen(
                [haproxyExecutable(), "-db", "-f", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def output(self) -> str:
        return self.outputPath.read_text("utf-8", "replace")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


def greetedBehindProxy(port: int) -> bool:
    """
    Whether a C{haproxy:} port answers a PROXY v1 header with a 220.
    """
    try:
        with socket.create_connection((LOOPBACK, port), timeout=3) as sock:
            sock.sendall(f"PROXY TCP4 127.0.0.9 {LOOPBACK} 1000 {port}\r\n".encode())
            replies, _ = readReplies(sock, 1, 3)
            sock.sendall(b"QUIT\r\n")
            return bool(replies) and replies[0].code == 220
    except OSError:
        return False


def instance(folder: Path, name: str, port: int) -> TwistdServer:
    return TwistdServer(
        [
            "-n",
            "--pidfile=",
            "esmtpkit",
            "--hostname",
            f"mx-{name}.test",
            "--port",
            f"haproxy:tcp:{port}:interface={LOOPBACK}",
            "--maildir",
            str(folder / name / "Maildir"),
            "--shutdown-timeout",
            "20",
        ],
        folder / name,
        None,
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[int, dict[str, TwistdServer], HAProxy]]:
    """
    Two esmtpkit instances and HAProxy in front; yields HAProxy's port,
    the instances by name and HAProxy. Everything is stopped by PID.
    """
    ports = {"a": freePort(), "b": freePort()}
    front = freePort()
    servers = {}
    proxy = HAProxy(
        tmp_path,
        CONFIG.format(loopback=LOOPBACK, front=front, a=ports["a"], b=ports["b"]),
    )
    try:
        for name, port in ports.items():
            (tmp_path / name).mkdir()
            servers[name] = server = instance(tmp_path, name, port)
            server.start()
            ready = waitFor(lambda port=port: greetedBehindProxy(port), 20)
            assert ready, server.output()
        proxy.start()
        # Both servers up in HAProxy's eyes: both greet through it.
        seen: set[str] = set()

        def both() -> bool:
            greeting = greetingVia(front)
            if greeting:
                seen.add(greeting)
            return len(seen) == 2

        assert waitFor(both, 20), (seen, proxy.output())
        yield front, servers, proxy
    finally:
        proxy.stop()
        for server in servers.values():
            server.stop()


def greetingVia(front: int) -> str | None:
    """
    The host name in the greeting of a connection through HAProxy.
    """
    try:
        with smtplib.SMTP(timeout=10, source_address=(CLIENT, 0)) as smtp:
            code, text = smtp.connect(LOOPBACK, front)
            smtp.quit()
    except (OSError, smtplib.SMTPException):
        return None
    return text.split()[0].decode() if code == 220 else None


def send(front: int, index: int) -> tuple[str, str] | None:
    """
    One message through HAProxy from CLIENT: its greeting's host name and
    subject if it was acknowledged with 250, else None.
    """
    body = f"Subject: message {index}\r\n\r\nnumber {index}\r\n".encode()
    smtp = smtplib.SMTP(timeout=20, source_address=(CLIENT, 0))
    try:
        code, greeting = smtp.connect(LOOPBACK, front)
        if code != 220:
            return None
        smtp.ehlo("client.example")
        smtp.sendmail("alice@example.org", ["bob@example.net"], body)
    except (OSError, smtplib.SMTPException):
        return None
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()  # a draining server closes after its reply
    return greeting.split()[0].decode(), f"message {index}"


def delivered(server: TwistdServer, name: str) -> dict[str, bytes]:
    """
    The messages in an instance's Maildir, by subject.
    """
    found = {}
    for path in maildirFiles(server.cwd / "Maildir", "new"):
        data = path.read_bytes()
        subject = re.search(rb"^Subject: (.*?)\r?$", data, re.M)
        assert subject, data
        found[subject.group(1).decode()] = data
    return found


def test_bothInstancesSeeTheRealClient(
    cluster: tuple[int, dict[str, TwistdServer], HAProxy],
) -> None:
    front, servers, _ = cluster
    results = [send(front, index) for index in range(8)]
    assert all(results), results
    hosts = {result[0] for result in results if result}
    assert hosts == {"mx-a.test", "mx-b.test"}
    for name, server in servers.items():
        messages = delivered(server, name)
        assert messages, f"{name} got nothing"
        for data in messages.values():
            head = data.split(b"\r\n\r\n", 1)[0]
            received = re.search(rb"^Received: .*$", head, re.M)
            assert received, head
            assert re.match(
                rb"Received: from client\.example \(\[127\.0\.0\.2\]\)",
                received.group(0),
            ), received.group(0)
        output = server.output()
        accepted = re.findall(
            r"session (\S+) message \S+ accepted: client=(\S+) ", output
        )
        assert len(accepted) == len(messages), output
        for session, client in accepted:
            assert client == CLIENT, output
            assert f"session {session} connected from {CLIENT}\n" in output, output
    # Never HAProxy's address for the clients' sessions.
    total = sum(len(delivered(s, n)) for n, s in servers.items())
    assert total == 8


def test_drainMovesNewConnections(
    cluster: tuple[int, dict[str, TwistdServer], HAProxy],
) -> None:
    front, servers, proxy = cluster
    a = servers["a"]
    # A transaction open on a when it is told to stop.
    held = None
    for _ in range(10):
        smtp = smtplib.SMTP(timeout=20, source_address=(CLIENT, 0))
        code, greeting = smtp.connect(LOOPBACK, front)
        if greeting.startswith(b"mx-a.test"):
            held = smtp
            break
        smtp.quit()
    assert held is not None, "HAProxy never sent a connection to a"
    held.ehlo("client.example")
    assert held.mail("alice@example.org")[0] == 250
    assert held.rcpt("bob@example.net")[0] == 250

    acknowledged: list[tuple[str, str]] = []
    stop = threading.Event()

    def load() -> None:
        index = 100
        while not stop.is_set() and index < 400:
            result = send(front, index)
            if result:
                acknowledged.append(result)
            index += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        assert waitFor(lambda: len(acknowledged) >= 4, 20)
        assert a.process is not None
        stopping = len(acknowledged)
        os.kill(a.process.pid, signal.SIGTERM)
        # HAProxy's checks see a gone; it does not come back.
        assert waitFor(lambda: "esmtpkit/a is DOWN" in proxy.output(), 10), (
            proxy.output()
        )
        # The open transaction still completes on a, and is acknowledged.
        code, text = held.data(b"Subject: held\r\n\r\nkept through the drain\r\n")
        assert code == 250, (code, text)
        try:
            held.quit()
        except (smtplib.SMTPException, OSError):
            pass  # closed right after the reply: the drain
        assert a.process.wait(25) == 0, a.output()
        after = len(acknowledged)
        assert waitFor(lambda: len(acknowledged) >= after + 5, 30), proxy.output()
    finally:
        stop.set()
        worker.join(60)
    assert stopping < after
    onA = delivered(a, "a")
    onB = delivered(servers["b"], "b")
    assert "held" in onA
    assert set(onA) & set(onB) == set()
    for host, subject in acknowledged:
        where = onA if host == "mx-a.test" else onB
        assert subject in where, (host, subject)
    # Every message acknowledged after a exited went to b.
    # (At most one was in flight when a exited.)
    for host, subject in acknowledged[after + 1 :]:
        assert host == "mx-b.test", (host, subject)
    assert "Traceback" not in a.output() + servers["b"].output()
