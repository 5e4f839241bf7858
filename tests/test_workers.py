"""
C{twistd esmtpkit --workers N|auto} end to end, with real twistd
subprocesses on 127.0.0.1:

  - C{--workers 2}: the parent has exactly two worker children, and many
    deliveries (sequential and concurrent) land in the Maildir exactly once,
    byte for byte, served by both workers;
  - C{--workers auto}: one worker per core the server may run on
    (C{os.sched_getaffinity}); pinned to one core, a single process;
  - a worker killed with SIGKILL is replaced (new PID) and the server keeps
    serving; SIGHUP to the parent leaves the workers running (same PIDs);
    SIGTERM to the parent ends the parent and every worker;
  - implicit TLS (C{ssl:}), STARTTLS (C{tcp:}) and C{haproxy:tcp:} work
    through the workers, and SIGHUP passed on makes every worker reload
    the certificate;
  - the other options reach every worker unchanged;
  - bad C{--workers} values, and C{ssl:} listeners the workers cannot
    serve, are one-line start-up errors.

Which worker served a connection is told by the session id: its first six
hex digits are random per process (L{esmtpkit.session}), and the 250 reply
to the message ends with the transaction id (C{SESSIONID.N}). With
C{--log-level info} the parent's log shows each worker's lines prefixed
with C{[worker-N]}, which ties a session id to a worker.

Limits are per worker: each worker has its own factory, so
C{--max-connections}, C{--max-connections-per-ip} and the other
per-process limits apply to each worker separately (N workers admit up to
N times C{--max-connections} in all). Which worker the kernel hands a
connection to is not under the test's control, so this is documented here
rather than tested.

Every server is started in a temporary directory and stopped by PID in a
C{finally} (the parent with SIGTERM, then SIGKILL; any worker still alive
with SIGKILL). Every wait is bounded.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    LOOPBACK,
    TwistdServer,
    freePort,
    maildirFiles,
    probeSMTP,
    readReplies,
    splitReceived,
)
from .tlshelpers import clientContext, fingerprint, makePKI

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """
    The state letter and parent PID of process C{pid}, or None if there is
    no such process.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and has not exited (a zombie has exited).
    """
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def childrenOf(parent: int) -> set[int]:
    """
    The live (not zombie) processes whose parent is C{parent}, found by
    scanning /proc.
    """
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None and stat[1] == parent and stat[0] not in ("Z", "X"):
            found.add(int(entry))
    return found


def processesMentioning(text: str) -> set[int]:
    """
    Live processes whose command line contains C{text}.
    """
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and alive(int(entry)):
            found.add(int(entry))
    return found


def waitFor(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05
) -> Any:
    """
    Poll C{predicate} until it returns something true (returned) or
    C{timeout} seconds pass (then the last false value is returned).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def killQuietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Server(TwistdServer):
    """
    C{twistd -n --pidfile= esmtpkit OPTIONS} in C{cwd} (a L{TwistdServer}
    that also knows its workers). C{readyPort}, if given, is probed for a
    220 greeting before L{start} returns. C{cpus}, if given, pins the server
    to those CPUs.
    """

    def __init__(
        self,
        cwd: Path,
        options: Sequence[str],
        readyPort: int | None,
        cpus: set[int] | None = None,
    ) -> None:
        preexec = None
        if cpus is not None:

            def preexec() -> None:
                os.sched_setaffinity(0, cpus)

        super().__init__(
            ["-n", "--pidfile=", "esmtpkit", *options], cwd, readyPort, preexec=preexec
        )
        self.readyPort = readyPort
        self.seen: set[int] = set()  # every worker PID ever noticed

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def workers(self) -> set[int]:
        found = childrenOf(self.pid)
        self.seen |= found
        return found

    def waitWorkers(self, count: int, timeout: float = 10.0) -> set[int]:
        """
        Wait until the parent has exactly C{count} live children; return
        them (or fail).
        """

        def exactly() -> tuple[set[int]] | None:
            found = self.workers()
            return (found,) if len(found) == count else None

        found = waitFor(exactly, timeout)
        assert found, (
            f"expected {count} workers, found {sorted(self.workers())}:\n{self.tail()}"
        )
        workers: set[int] = found[0]
        return workers

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """
        SIGTERM the parent (SIGKILL after C{timeout}), then SIGKILL any
        worker that is still alive.
        """
        process = self.process
        if process is None:
            return None
        try:
            self.workers()
        except AssertionError:
            pass
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout)
        for pid in self.seen:
            if alive(pid):
                killQuietly(pid)
        return process.returncode

    def __enter__(self) -> Server:
        super().__enter__()
        return self


def runToCompletion(
    cwd: Path, options: Sequence[str], timeout: float = 10.0
) -> tuple[int | None, str]:
    """
    Run C{twistd -n esmtpkit OPTIONS}, expected to exit by itself; if it
    is still running after C{timeout} seconds, stop it (and its children)
    and return None as its status.
    """
    server = Server(cwd, options, readyPort=None)
    server.start()
    assert server.process is not None
    try:
        status: int | None = server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        status = None
    finally:
        server.stop()
    return status, server.output()


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


_serial = itertools.count(1)  # next() on it is atomic: safe in threads


def message(index: int, size: int = 0) -> bytes:
    """
    A distinct message: dot-stuffing, 8-bit text and (with C{size}) a long
    body, so that a byte-exact comparison means something.
    """
    body = b"".join(
        b"line %d of message %d: " % (n, index) + b"x" * 60 + b"\r\n"
        for n in range(size // 80)
    )
    return (
        b"From: Alice <alice@example.org>\r\n"
        b"Subject: worker test %d\r\n"
        b"Message-ID: <%d.workers@example.org>\r\n"
        b"\r\n"
        b"Hello %d.\r\n"
        b".a dotted line\r\n"
        b"..\r\n"
        b"\xe2\x82\xac 8-bit line\r\n" % (index, index, index)
    ) + body


def sessionPrefix(dataReply: bytes | str) -> str:
    """
    The per-process part (first six hex digits) of the transaction id at
    the end of a 250 reply to a message.
    """
    text = dataReply.decode() if isinstance(dataReply, bytes) else dataReply
    match = re.search(r"\b([0-9A-F]{6})[0-9A-F]+\.\d+\s*$", text)
    assert match, f"no transaction id in {text!r}"
    return match.group(1)


def deliver(port: int, data: bytes) -> str:
    """
    Send C{data} with smtplib over plain SMTP; return the session prefix.
    """
    with smtplib.SMTP(
        LOOPBACK, port, local_hostname="client.example", timeout=20
    ) as smtp:
        smtp.ehlo()
        assert smtp.mail("alice@example.org")[0] == 250
        assert smtp.rcpt("carol@example.net")[0] == 250
        code, text = smtp.data(data)
        assert code == 250, (code, text)
        return sessionPrefix(text)


def deliverTLS(
    port: int, data: bytes, context: ssl.SSLContext, implicit: bool
) -> tuple[str, str]:
    """
    Send C{data} over implicit TLS or STARTTLS; return the server
    certificate's fingerprint and the session prefix.
    """
    smtp: smtplib.SMTP
    if implicit:
        smtp = smtplib.SMTP_SSL(
            LOOPBACK, port, local_hostname="client.example", timeout=20, context=context
        )
    else:
        smtp = smtplib.SMTP(LOOPBACK, port, local_hostname="client.example", timeout=20)
    with smtp:
        smtp.ehlo()
        if not implicit:
            assert smtp.has_extn("starttls")
            assert smtp.starttls(context=context)[0] == 220
            smtp.ehlo()
            assert not smtp.has_extn("starttls")
        sock: Any = smtp.sock
        seen = fingerprint(sock.getpeercert(binary_form=True))
        assert smtp.mail("alice@example.org")[0] == 250
        assert smtp.rcpt("carol@example.net")[0] == 250
        code, text = smtp.data(data)
        assert code == 250, (code, text)
        return seen, sessionPrefix(text)


def deliverProxied(port: int, data: bytes, source: str) -> tuple[str, str]:
    """
    Connect to a C{haproxy:} port, send a PROXY v1 header claiming
    C{source}, then EHLO and a message. Return the EHLO reply's first line
    and the session prefix.
    """
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(f"PROXY TCP4 {source} 127.0.0.1 40001 {port}\r\n".encode())
        replies, _ = readReplies(sock, 1)
        assert replies and replies[0].code == 220, replies
        lines = [
            b"EHLO client.example",
            b"MAIL FROM:<alice@example.org>",
            b"RCPT TO:<carol@example.net>",
            b"DATA",
        ]
        answers = []
        for line in lines:
            sock.sendall(line + b"\r\n")
            got, _ = readReplies(sock, 1)
            assert got, f"no reply to {line!r}"
            answers.append(got[0])
        assert [r.code for r in answers] == [250, 250, 250, 354], answers
        stuffed = b"".join(
            (b"." + line if line.startswith(b".") else line)
            for line in data.splitlines(keepends=True)
        )
        sock.sendall(stuffed + b".\r\n")
        final, _ = readReplies(sock, 1)
        assert final and final[0].code == 250, final
        sock.sendall(b"QUIT\r\n")
        readReplies(sock, 1)
    return answers[0].lines[0], sessionPrefix(final[0].lines[-1])


def inParallel(jobs: Sequence[Callable[[], Any]], threads: int = 8) -> list[Any]:
    """
    Run C{jobs} on a thread pool; return their results in order (an
    exception in a job is raised here).
    """
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result(timeout=60) for future in futures]


def untilServedByTwo(
    job: Callable[[], Any],
    prefixOf: Callable[[Any], str] = lambda result: str(result),
    timeout: float = 10.0,
    batch: int = 4,
) -> list[Any]:
    """
    Run C{job} in concurrent batches until its results show two distinct
    session prefixes (both workers served), or fail after C{timeout}
    seconds. A worker takes a moment to start Python and adopt the
    sockets, so the first connections may all go to the other one.

    @return: all the results.
    """
    results: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        results += inParallel([job] * batch, batch)
        prefixes = {prefixOf(r) for r in results}
        if len(prefixes) >= 2:
            return results
        if time.monotonic() > deadline:
            raise AssertionError(f"one worker only ({prefixes}) in {timeout}s")


def assertMaildirHolds(maildir: Path, sent: Sequence[bytes]) -> list[bytes]:
    """
    C{maildir}/new holds exactly the messages C{sent}, each once and byte
    for byte after its Received header; tmp/ is empty. Returns the
    Received headers.
    """
    files = maildirFiles(maildir, "new")
    bodies = []
    headers = []
    for path in files:
        received, rest = splitReceived(path.read_bytes())
        bodies.append(rest)
        headers.append(received)
    assert len(set(sent)) == len(sent), "the test sent a message twice"
    assert sorted(bodies) == sorted(sent), (
        f"{len(bodies)} delivered, {len(sent)} sent; "
        f"missing {len(set(sent) - set(bodies))}, "
        f"unexpected {len(set(bodies) - set(sent))}"
    )
    assert maildirFiles(maildir, "tmp") == []
    return headers


def tcp(port: int) -> str:
    return f"tcp:{port}:interface={LOOPBACK}"


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_twoWorkersDeliverEverythingOnce(tmp_path: Path) -> None:
    """
    C{--workers 2}: exactly two worker children (running with the
    inherited socket, without --workers); 40 deliveries, 30 of them
    concurrent, all land in the Maildir exactly once, byte for byte, and
    both workers served some (two session prefixes, each tied by the log
    to a different [worker-N]).
    """
    port = freePort()
    maildir = tmp_path / "mail"
    options = ["--workers", "2", "--port", tcp(port), "--maildir", str(maildir),
               "--log-level", "info"]  # fmt: skip
    with Server(tmp_path, options, port) as server:
        workers = server.waitWorkers(2)
        assert server.pid not in workers
        for pid in workers:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert not any(a.startswith(b"--workers") for a in argv), argv
            assert any(a.startswith(b"--inherited-port") for a in argv), argv
        # Until both workers are listening (a worker takes a moment to
        # start Python), then the 40 deliveries.
        sent: list[bytes] = []

        def warmUp() -> str:
            data = message(next(_serial))
            sent.append(data)
            return deliver(port, data)

        untilServedByTwo(warmUp)
        forty = [message(next(_serial), size=(i % 5) * 4000) for i in range(40)]
        sent += forty
        prefixes = [deliver(port, data) for data in forty[:10]]
        prefixes += inParallel([partial(deliver, port, data) for data in forty[10:]])
        headers = assertMaildirHolds(maildir, sent)
        # No worker was restarted along the way.
        assert server.workers() == workers
        assert len(set(prefixes)) == 2, f"served by {set(prefixes)}"
        inHeaders = {
            m.group(1)
            for h in headers
            if (m := re.search(rb"\bid ([0-9A-F]{6})[0-9A-F]*\.\d+", h))
        }
        assert {p.encode() for p in prefixes} == inHeaders
    output = server.output()
    owners = {
        prefix: set(re.findall(rf"\[(worker-\d+) [^\]]*\].*session {prefix}", output))
        for prefix in set(prefixes)
    }
    assert sorted(w for ws in owners.values() for w in ws) == [
        "worker-1",
        "worker-2",
    ], owners
    assert "Traceback" not in output


def test_autoIsOneWorkerPerCore(tmp_path: Path) -> None:
    """
    C{--workers auto} runs one worker per core the server may run on
    (C{os.sched_getaffinity}): with the test's own CPUs, that many workers
    (a single process if there is one); pinned to one CPU, a single
    process with no worker children. Both serve.
    """
    cpus = os.sched_getaffinity(0)
    for allowed in (cpus, {min(cpus)}):
        port = freePort()
        home = tmp_path / f"cpus{len(allowed)}"
        home.mkdir(exist_ok=True)
        options = ["--workers", "auto", "--port", tcp(port), "--maildir", "mail"]
        with Server(home, options, port, cpus=allowed) as server:
            expected = len(allowed) if len(allowed) > 1 else 0
            server.waitWorkers(expected)
            deliver(port, message(1))
            # Still that many a moment later (none died at start).
            time.sleep(0.3)
            assert len(server.workers()) == expected
        assertMaildirHolds(home / "mail", [message(1)])


def test_workerCrashHangupAndTerminate(tmp_path: Path) -> None:
    """
    A worker killed with SIGKILL: the server keeps serving at once and a
    new worker (new PID) appears within a few seconds and serves too.
    SIGHUP to the parent: same workers afterwards, still serving. SIGTERM
    to the parent, with idle clients connected: the parent and every
    worker exit within 10 s, the port is closed and no process of this
    server is left.
    """
    port = freePort()
    maildir = tmp_path / "mail"
    options = ["--workers", "2", "--port", tcp(port), "--maildir", str(maildir)]
    sent: list[bytes] = []

    def one() -> str:
        data = message(next(_serial))
        sent.append(data)
        return deliver(port, data)

    def send(count: int) -> list[str]:
        return inParallel([one] * count, 4)

    with Server(tmp_path, options, port) as server:
        first = server.waitWorkers(2)
        prefixes = set(untilServedByTwo(one))

        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # The other worker keeps accepting on the shared socket.
        assert len(send(5)) == 5

        def withoutVictim() -> set[int] | None:
            found = server.workers()
            return found if len(found) == 2 and victim not in found else None

        replaced = waitFor(withoutVictim, 6)
        assert replaced, f"no new worker: {server.workers()}\n{server.tail()}"
        assert (first - {victim}) < replaced
        newcomer = (replaced - first).pop()
        assert newcomer != victim
        # The new worker serves: a third session prefix appears.
        newPrefixes = waitFor(lambda: set(send(6)) - prefixes, 10)
        assert newPrefixes, "the replacement worker never served"
        prefixes |= newPrefixes

        os.kill(server.pid, signal.SIGHUP)
        time.sleep(1.0)
        assert server.process is not None and server.process.poll() is None
        assert server.workers() == replaced, "SIGHUP killed or replaced a worker"
        assert len(send(6)) == 6
        assert server.workers() == replaced

        # Idle clients do not hold the shutdown up.
        idle = [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(3)]
        try:
            for sock in idle:
                replies, _ = readReplies(sock, 1)
                assert replies and replies[0].code == 220
            everyone = replaced | {server.pid}
            started = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            status = server.process.wait(12)
        finally:
            for sock in idle:
                sock.close()
        gone = waitFor(
            lambda: not any(alive(p) for p in everyone),
            12 - (time.monotonic() - started),
        )
        elapsed = time.monotonic() - started
        assert gone, [p for p in everyone if alive(p)]
        assert elapsed < 10.5, elapsed
        # twistd exits with the signal that stopped it (or 0).
        assert status in (0, -signal.SIGTERM), server.tail()
        assert not probeSMTP(port, timeout=1.0)
        assert processesMentioning(f"tcp:{port}:") == set()
    assertMaildirHolds(maildir, sent)


def test_tlsProxyAndReloadThroughWorkers(tmp_path: Path) -> None:
    """
    With two workers and C{--tls-cert/--tls-key}: implicit TLS on an
    C{ssl:} port and STARTTLS on a C{tcp:} port deliver through both
    workers; a C{haproxy:tcp:} port takes the PROXY v1 header (the EHLO
    reply and the Received header show the proxied address) through both
    workers. After the certificate files are replaced and the parent gets
    SIGHUP, the same workers present the new certificate.
    """
    pki = makePKI(tmp_path / "pki")
    context = clientContext(pki)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.serverCert, cert)
    shutil.copy(pki.serverKey, key)
    tlsPort, plainPort, proxyPort = freePort(), freePort(), freePort()
    maildir = tmp_path / "mail"
    options = [
        "--workers", "2",
        "--tls-cert", str(cert), "--tls-key", str(key),
        "--port", f"ssl:{tlsPort}:interface={LOOPBACK}",
        "--port", tcp(plainPort),
        "--port", f"haproxy:{tcp(proxyPort)}",
        "--maildir", str(maildir),
    ]  # fmt: skip
    sent: list[bytes] = []

    def bothWorkers(
        job: Callable[[bytes], Any], key: Callable[[Any], str]
    ) -> list[Any]:
        """C{job} on new messages until both workers served."""

        def one() -> Any:
            data = message(next(_serial), size=3000)
            sent.append(data)
            return job(data)

        return untilServedByTwo(one, key, batch=6)

    with Server(tmp_path, options, plainPort) as server:
        workers = server.waitWorkers(2)

        implicit = bothWorkers(
            lambda d: deliverTLS(tlsPort, d, context, True), lambda r: r[1]
        )
        assert {f for f, _ in implicit} == {pki.fingerprintA}
        starttls = bothWorkers(
            lambda d: deliverTLS(plainPort, d, context, False), lambda r: r[1]
        )
        assert {f for f, _ in starttls} == {pki.fingerprintA}

        proxied = bothWorkers(
            lambda d: deliverProxied(proxyPort, d, "203.0.113.7"), lambda r: r[1]
        )
        for ehlo, _ in proxied:
            assert "[203.0.113.7]" in ehlo, ehlo

        # New certificate files, then SIGHUP to the parent only.
        shutil.copy(pki.serverCertB, tmp_path / "new.pem")
        shutil.copy(pki.serverKeyB, tmp_path / "new.key")
        os.replace(tmp_path / "new.key", key)
        os.replace(tmp_path / "new.pem", cert)
        os.kill(server.pid, signal.SIGHUP)
        time.sleep(1.0)
        after = bothWorkers(
            lambda d: deliverTLS(tlsPort, d, context, True), lambda r: r[1]
        )
        assert {f for f, _ in after} == {pki.fingerprintB}, "a worker did not reload"
        assert server.workers() == workers
    headers = assertMaildirHolds(maildir, sent)
    proxiedHeaders = [h for h in headers if b"203.0.113.7" in h]
    assert len(proxiedHeaders) == len(proxied)
    assert "Traceback" not in server.output()


def test_optionsReachEveryWorker(tmp_path: Path) -> None:
    """
    The workers run with the parent's other options, in both spellings
    (C{--opt value} and C{--opt=value}, an empty value included):
    C{--hostname}, C{--max-message-size} and an empty
    C{--connection-limit-exempt=} hold in both workers.
    """
    port = freePort()
    options = [
        "--workers", "2", "--port", tcp(port),
        "--hostname=mx.workers.test",
        "--max-message-size", "2K",
        "--connection-limit-exempt=",
        "--maildir", "mail",
    ]  # fmt: skip
    server = Server(tmp_path, options, port)
    try:
        server.start(readyTimeout=10)
        workers = server.waitWorkers(2)

        def check() -> str:
            with smtplib.SMTP(
                LOOPBACK, port, local_hostname="client.example", timeout=10
            ) as smtp:
                code, greeting = smtp.ehlo()
                assert code == 250
                assert greeting.startswith(b"mx.workers.test "), greeting
                assert smtp.esmtp_features.get("size") == "2048", smtp.esmtp_features
                assert smtp.mail("alice@example.org")[0] == 250
                assert smtp.rcpt("carol@example.net")[0] == 250
                code, text = smtp.data(message(1))
                assert code == 250, text
                return sessionPrefix(text)

        untilServedByTwo(check)
        assert server.workers() == workers
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        (["--workers", "0"], ["--workers", "'0'"]),
        (["--workers", "x"], ["--workers", "'x'"]),
        (["--workers", "-2"], ["--workers", "'-2'"]),
        (
            ["--workers", "2", "--port", "ssl:{port}:privateKey={key}:certKey={cert}"],
            ["--workers", "--tls-cert", "ssl:{port}:privateKey="],
        ),
        (["--workers", "2", "--port", "ssl:{port}"], ["--port", "ssl:{port}"]),
    ],
    ids=["zero", "word", "negative", "ssl-own-key", "ssl-without-tls-cert"],
)
def test_startupErrors(tmp_path: Path, options: list[str], mentions: list[str]) -> None:
    """
    A bad C{--workers} value, an C{ssl:} port with its own key, or an
    C{ssl:} port without C{--tls-cert}, makes twistd exit non-zero quickly
    with one clear line naming the problem, no traceback, and no worker.
    """
    pki = makePKI(tmp_path / "pki")
    fill = {"port": freePort(), "key": pki.serverKey, "cert": pki.serverCert}
    options = [o.format(**fill) for o in options]
    mentions = [m.format(**fill) for m in mentions]
    started = time.monotonic()
    status, output = runToCompletion(tmp_path, options, timeout=8)
    elapsed = time.monotonic() - started
    assert status is not None, f"still running after {elapsed:.0f}s:\n{output[-3000:]}"
    assert status != 0
    assert "Traceback" not in output
    assert "[worker-" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    last = lines[-1]
    for word in mentions:
        assert word in last, f"{word!r} not in the error line {last!r}"
    assert [line for line in lines if mentions[-1] in line] == [last]
