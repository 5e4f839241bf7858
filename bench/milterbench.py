"""
Scenario M of the benchmark: esmtpkit as a milter (issue 11, section 4).

    bench/run --scenarios M            # (--quick for a short run)

Three measurements, each with a fresh process, every process stopped by
its PID:

  - M1, through Postfix: msg/s of smtp-source (10 sessions, kept open, 1 KiB
    messages) into a private Postfix (tests/postfix.py's PrivatePostfix,
    delivery to discard:) without a milter, with esmtpkit's milter face
    (bench/peers/esmtpkit_milter.py: HEADER and EOM hooks, one header
    added) and with the same milter on pymilter (bench/peers/pymilter_bench.py,
    Debian's python3-milter under /usr/bin/python3); every message is
    checked delivered in Postfix's log, and (esmtpkit) seen by the milter.
  - M2, the milter as the bottleneck: msg/s of an MTA simulator in this
    process (10 connections, each one transaction after another, the
    negotiated steps only, every reply read and checked) straight at each
    milter.
  - M3, memory: RSS growth of each milter holding 200 connections that have
    negotiated and sent CONNECT and HELO, per connection.

Target: esmtpkit costs Postfix no more throughput than pymilter (M1), and
has at least 1.5x pymilter's msg/s when the milter is the bottleneck (M2).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from esmtpkit.milter import wire  # noqa: E402

MILTERS = ("esmtpkit", "pymilter")
SUBJECT = b"Subject: bench\r\n"
HEADERS = [
    (b"From", b" bench@sender.test"),
    (b"To", b" bob@example.org"),
    (b"Subject", b" bench"),
    (b"Message-ID", b" <bench@sender.test>"),
]
BODY = b"x" * 1000 + b"\r\n"


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Milter:
    """
    One milter process on a free loopback port.
    """

    def __init__(self, kind: str, logs: Path, label: str, prefix: list[str]) -> None:
        self.kind = kind
        self.port = _free()
        env = dict(os.environ)
        if kind == "esmtpkit":
            env["PYTHONPATH"] = os.pathsep.join([str(HERE / "peers"), str(REPO)])
            command = [
                str(Path(sys.executable).with_name("twistd")),
                "-n",
                "--pidfile=",
                "esmtpkit",
                "--handler",
                "esmtpkit_milter.HeaderEOMMilter",
                "-p",
                f"milter:tcp:{self.port}:interface=127.0.0.1",
            ]
        else:
            command = [
                "/usr/bin/python3",
                str(HERE / "peers" / "pymilter_bench.py"),
                f"inet:{self.port}@127.0.0.1",
            ]
        self.command = prefix + command
        self.log = logs / f"{label}-{kind}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=logs,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                with MTAConnection(self.port) as probe:
                    probe.negotiate()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{kind} milter did not start: {self.log}"
                    ) from None
                time.sleep(0.05)
        self.peak = 0

    def sample(self) -> int:
        rss = _rss(self.proc.pid)
        self.peak = max(self.peak, rss)
        return rss

    def stop(self) -> None:
        _stop(self.proc)

    def output(self) -> str:
        return self.log.read_text("utf-8", "replace")


class MTAConnection:
    """
    The MTA side of one milter connection (blocking): negotiation, then the
    steps the milter asked for, each reply read and checked.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = wire.PacketReader()
        self.protocol = 0
        self.pending: list[tuple[bytes, bytes]] = []

    def __enter__(self) -> MTAConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(wire.packet(command, data))

    def read(self) -> tuple[bytes, bytes]:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise OSError("milter closed the connection")
            self.pending.extend(self.reader.feed(data))
        return self.pending.pop(0)

    def negotiate(self) -> None:
        self.send(wire.OPTNEG, struct.pack("!III", 6, wire.SMFIF_ALL, 0x1FFFFF))
        command, data = self.read()
        if command != wire.OPTNEG:
            raise OSError(f"negotiation answered {command!r}")
        _, _, self.protocol, _ = wire.decodeNegotiation(data)

    def step(self, command: bytes, data: bytes = b"") -> bytes | None:
        """
        Send a step unless the milter left it out; read its reply unless
        negotiated as no-reply. Returns the reply's command.
        """
        flags = wire.STEP_FLAGS.get(command)
        if flags is not None and self.protocol & flags[0]:
            return None
        self.send(command, data)
        if flags is not None and self.protocol & flags[1]:
            return None
        while True:
            reply, _ = self.read()
            if reply == wire.PROGRESS:
                continue
            if command == wire.BODYEOB and reply in wire.MODIFICATIONS:
                continue
            return reply

    def greet(self) -> None:
        self.step(
            wire.CONNECT, b"client\0" + b"4" + struct.pack("!H", 1025) + b"127.0.0.1\0"
        )
        self.step(wire.HELO, b"client.test\0")

    def message(self) -> None:
        for command, data in (
            (wire.MAIL, b"<bench@sender.test>\0"),
            (wire.RCPT, b"<bob@example.org>\0"),
            (wire.DATA, b""),
            *((wire.HEADER, n + b"\0" + v + b"\0") for n, v in HEADERS),
            (wire.EOH, b""),
            (wire.BODY, BODY),
        ):
            reply = self.step(command, data)
            if reply not in (None, wire.CONTINUE):
                raise OSError(f"{command!r} answered {reply!r}")
        reply = self.step(wire.BODYEOB)
        if reply not in (wire.ACCEPT, wire.CONTINUE):
            raise OSError(f"end of body answered {reply!r}")


def _direct(port: int, connections: int, messages: int) -> float:
    """
    M2: msg/s of C{connections} MTA connections sending C{messages} in all.
    """
    errors: list[BaseException] = []
    each = messages // connections

    def work() -> None:
        try:
            with MTAConnection(port) as mta:
                mta.negotiate()
                mta.greet()
                for _ in range(each):
                    mta.message()
                mta.send(wire.QUIT)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(connections)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"direct load failed: {errors[0]!r}")
    return each * connections / elapsed


def _memory(milter: Milter, count: int) -> float:
    """
    M3: RSS growth per connection held (negotiated, CONNECT and HELO sent).
    """
    time.sleep(0.5)
    before = milter.sample()
    held = []
    try:
        for _ in range(count):
            mta = MTAConnection(milter.port)
            mta.negotiate()
            mta.greet()
            held.append(mta)
        time.sleep(1.0)
        after = milter.sample()
    finally:
        for mta in held:
            mta.sock.close()
    return (after - before) / count


def _throughPostfix(
    kind: str | None, messages: int, logs: Path, label: str, client: list[str]
) -> dict[str, Any]:
    """
    M1: msg/s through a private Postfix, with milter C{kind} or none.
    """
    from tests.postfix import PrivatePostfix

    milter = Milter(kind, logs, label, []) if kind else None
    postfix = None
    try:
        milters = [f"inet:127.0.0.1:{milter.port}"] if milter else []
        postfix = PrivatePostfix("discard:", milters=milters)
        postfix.start()
        source = [
            shutil.which("smtp-source", path=os.environ["PATH"] + ":/usr/sbin")
            or "smtp-source",
            "-l",
            "1024",
            "-f",
            "bench@sender.test",
            "-t",
            "bob@example.org",
            "-d",
        ]
        warm = 20
        target = f"127.0.0.1:{postfix.smtpPort}"
        subprocess.run(
            client + source + ["-s", "2", "-m", str(warm), target], check=True
        )
        start = time.perf_counter()
        subprocess.run(
            client + source + ["-s", "10", "-m", str(messages), target],
            check=True,
            timeout=600,
        )
        elapsed = time.perf_counter() - start
        total = warm + messages
        deadline = time.monotonic() + 120
        while len(postfix.deliveries("bob@example.org")) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{label}: {len(postfix.deliveries('bob@example.org'))} of "
                    f"{total} delivered"
                )
            time.sleep(0.2)
        result: dict[str, Any] = {"msg_s": messages / elapsed}
        if milter is not None:
            result["milter_rss"] = milter.sample()
            if kind == "esmtpkit":
                seen = sum(
                    1
                    for line in milter.output().splitlines()
                    if " accepted: " in line and " from=<bench@sender.test> " in line
                )
                if seen < total:
                    raise RuntimeError(f"{label}: esmtpkit saw {seen} of {total}")
        return result
    finally:
        if postfix is not None:
            postfix.stop()
        if milter is not None:
            milter.stop()


def run(
    quick: bool, logs: Path, client: list[str], server: list[str]
) -> tuple[list[str], dict[str, Any]]:
    """
    Run scenario M; return the Markdown lines of its report and its raw
    results.
    """
    rounds = 2 if quick else 3
    messages = 500 if quick else 3000
    direct = 2000 if quick else 10000
    held = 200
    runs: list[dict[str, Any]] = []
    for round in range(rounds):
        for kind in (None, *MILTERS):
            name = kind or "postfix alone"
            record = {"round": round, "what": "M1", "milter": name}
            try:
                record.update(
                    _throughPostfix(kind, messages, logs, f"r{round}-M1", client)
                )
            except Exception as e:
                record["failure"] = str(e)
            runs.append(record)
            print(f"  round {round + 1} M1 {name:14} {record}", file=sys.stderr)
        for kind in MILTERS:
            record = {"round": round, "what": "M2", "milter": kind}
            milter = Milter(kind, logs, f"r{round}-M2", server)
            try:
                record["msg_s"] = _direct(milter.port, 10, direct)
                record["peak_rss"] = milter.sample()
            except Exception as e:
                record["failure"] = str(e)
            finally:
                milter.stop()
            runs.append(record)
            print(f"  round {round + 1} M2 {kind:14} {record}", file=sys.stderr)
            record = {"round": round, "what": "M3", "milter": kind}
            milter = Milter(kind, logs, f"r{round}-M3", server)
            try:
                record["bytes_per_connection"] = _memory(milter, held)
            except Exception as e:
                record["failure"] = str(e)
            finally:
                milter.stop()
            runs.append(record)
            print(f"  round {round + 1} M3 {kind:14} {record}", file=sys.stderr)
    return _report(runs, messages, direct, held), {"runs": runs}


def _median(
    runs: list[dict[str, Any]], what: str, milter: str, key: str
) -> float | None:
    values = [
        r[key] for r in runs if r["what"] == what and r["milter"] == milter and key in r
    ]
    return statistics.median(values) if values else None


def _report(
    runs: list[dict[str, Any]], messages: int, direct: int, held: int
) -> list[str]:
    def cell(value: float | None, digits: int = 0) -> str:
        return "failed" if value is None else f"{value:,.{digits}f}"

    lines = [
        "### M: esmtpkit as a milter (medians)",
        "",
        f"M1: smtp-source, 10 sessions, {messages} 1 KiB messages into a private "
        "Postfix (discard:); M2: an MTA simulator, 10 connections, "
        f"{direct} messages straight at the milter; M3: RSS per connection "
        f"with {held} held.",
        "",
        "| | Postfix msg/s (M1) | milter msg/s (M2) | bytes/connection (M3) |",
        "|---|---|---|---|",
        f"| Postfix, no milter | {cell(_median(runs, 'M1', 'postfix alone', 'msg_s'))} "
        "| | |",
    ]
    for kind in MILTERS:
        lines.append(
            f"| Postfix + {kind} | {cell(_median(runs, 'M1', kind, 'msg_s'))} | "
            f"{cell(_median(runs, 'M2', kind, 'msg_s'))} | "
            f"{cell(_median(runs, 'M3', kind, 'bytes_per_connection'))} |"
        )
    ours = _median(runs, "M2", "esmtpkit", "msg_s")
    theirs = _median(runs, "M2", "pymilter", "msg_s")
    through = _median(runs, "M1", "esmtpkit", "msg_s")
    peer = _median(runs, "M1", "pymilter", "msg_s")
    lines.append("")
    if ours and theirs:
        met = "met" if ours >= 1.5 * theirs else "NOT met"
        lines.append(f"M2 esmtpkit ÷ pymilter: {ours / theirs:.2f} (target 1.5: {met})")
    if through and peer:
        met = "met" if through >= 0.97 * peer else "NOT met"
        lines.append(
            f"M1 esmtpkit ÷ pymilter through Postfix: {through / peer:.2f} "
            f"(target: no worse, within 3 % noise: {met})"
        )
    failures = [
        f"- {r['what']} {r['milter']}: {r['failure']}" for r in runs if "failure" in r
    ]
    if failures:
        lines += ["", "Failures:", *failures]
    return lines


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"milterbench-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    text, _ = run(quick, folder, [], [])
    print("\n".join(text))
