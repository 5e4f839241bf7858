"""
C{twistd esmtpkit --metrics ENDPOINT} end to end: real C{twistd}
processes on 127.0.0.1, smtplib traffic, then C{/metrics} scraped over HTTP
(urllib, no proxy) and parsed with C{prometheus_client.parser}.

  - one process: two messages, one with a refused recipient; the counts
    of connections, replies by verb and class, transactions, messages,
    bytes and recipients are exact (as differences from a scrape taken
    before the traffic, which leaves out the readiness probe);
  - C{--workers 2}: one endpoint, served by the supervisor, with the totals
    of both workers (prometheus_client's multiprocess mode); the active
    connections of workers killed with SIGKILL are forgotten while their
    counters are kept; the multiprocess directory is removed when the
    server stops.

Every server runs in a temporary directory and is stopped by PID in a
C{finally} (the workers' test helper also kills any worker left); every
wait is bounded.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .helpers import LOOPBACK, PROJECT_ROOT, TwistdServer, freePort, readReplies
from .test_workers import Server, killQuietly, waitFor

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

MESSAGE = b"From: alice@example.com\r\nSubject: metrics\r\n\r\nHello.\r\n"


def scrape(port: int, timeout: float = 10.0) -> Samples:
    """
    GET http://127.0.0.1:PORT/metrics (retried until it answers, at most
    C{timeout} seconds), parsed: C{{(name, labels): value}}.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                text = r.read().decode("utf-8")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def command(verb: str, replyClass: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return key("esmtpkit_commands_total", verb=verb, reply_class=replyClass)


def delta(after: Samples, before: Samples, prefix: str = "") -> Samples:
    """
    The samples that changed from C{before} to C{after} (a sample missing
    from C{before} counts as 0), by how much; only names starting with
    C{prefix}; no C{_created} timestamps.
    """
    return {
        k: v - before.get(k, 0.0)
        for k, v in after.items()
        if k[0].startswith(prefix)
        and not k[0].endswith("_created")
        and v != before.get(k, 0.0)
    }


def waitScrape(
    port: int, predicate: Callable[[Samples], bool], timeout: float = 15.0
) -> Samples:
    """
    Scrape until C{predicate} holds of the samples (or fail after
    C{timeout} seconds, with the last ones).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = scrape(port)
        if predicate(found):
            return found
        if time.monotonic() > deadline:
            shown = {
                k: v
                for k, v in found.items()
                if v and not k[0].endswith(("_bucket", "_sum", "_count"))
            }
            raise AssertionError(f"metrics never matched; non-zero: {shown}")
        time.sleep(0.1)


def send(port: int, recipients: list[str]) -> dict[str, Any]:
    """
    One connection, one message to C{recipients}; the refused ones.
    """
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.example", timeout=30) as s:
        return s.sendmail("alice@example.com", recipients, MESSAGE)


def test_scrapeOneProcess(tmp_path: Path) -> None:
    """
    Two messages, one with a recipient the handler refuses: exact counts
    over HTTP.
    """
    port, metricsPort = freePort(), freePort()
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
        "--handler",
        "examples.hello_handler.HelloHandler",
        "--metrics",
        f"tcp:{metricsPort}:interface={LOOPBACK}",
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with TwistdServer(args, cwd=tmp_path, port=port, env=env) as server:
        before = waitScrape(
            metricsPort, lambda s: s.get(key("esmtpkit_connections_active")) == 0
        )
        assert before[key("esmtpkit_build_info", version="0.1.0")] == 1
        refused = send(port, ["bob@example.org", "eve@elsewhere.net"])
        assert list(refused) == ["eve@elsewhere.net"]
        assert refused["eve@elsewhere.net"][0] == 550
        assert send(port, ["carol@example.org"]) == {}
        after = waitScrape(
            metricsPort,
            lambda s: (
                s.get(key("esmtpkit_connections_active")) == 0
                and s.get(key("esmtpkit_connections_total"), 0)
                == before[key("esmtpkit_connections_total")] + 2
            ),
        )
        output = server.output()
    assert "Traceback" not in output, output
    assert delta(after, before, "esmtpkit_commands") == {
        command("CONNECT", "2xx"): 2,
        command("EHLO", "2xx"): 2,
        command("MAIL", "2xx"): 2,
        command("RCPT", "2xx"): 2,
        command("RCPT", "5xx"): 1,
        command("DATA", "3xx"): 2,
        command("EOM", "2xx"): 2,
        command("QUIT", "2xx"): 2,
    }
    changed = delta(after, before)
    expected = {
        key("esmtpkit_connections_total"): 2,
        key("esmtpkit_transactions_total", outcome="accepted"): 2,
        key("esmtpkit_messages_received_total"): 2,
        key("esmtpkit_received_bytes_total"): 2 * len(MESSAGE),
        key("esmtpkit_message_recipients_count"): 2,
        key("esmtpkit_message_recipients_sum"): 2,
        key("esmtpkit_message_recipients_bucket", le="1.0"): 2,
        key("esmtpkit_message_size_bytes_count"): 2,
        key("esmtpkit_message_size_bytes_sum"): 2 * len(MESSAGE),
        key("esmtpkit_message_size_bytes_bucket", le="1024.0"): 2,
    }
    assert {k: changed.get(k) for k in expected} == expected
    for outcome in ("partial", "refused", "aborted"):
        assert key("esmtpkit_transactions_total", outcome=outcome) not in changed
    assert not [k for k in changed if k[0].startswith("esmtpkit_limit_hits")]
    # Every hook that ran has a duration; RCPT ran three times.
    assert changed[key("esmtpkit_hook_duration_seconds_count", hook="RCPT")] == 3
    # No address in any label.
    assert not [k for k in after if any("@" in v for _, v in k[1])]


def test_scrapeWorkers(tmp_path: Path) -> None:
    """
    Under --workers 2: the supervisor's one endpoint has the totals of
    both workers; killed workers' active connections are forgotten, their
    counts kept; the multiprocess directory goes when the server stops.
    """
    port, metricsPort = freePort(), freePort()
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = Server(
        tmp_path,
        [
            "--workers",
            "2",
            "--port",
            f"tcp:{port}:interface={LOOPBACK}",
            "--handler",
            "esmtpkit.handlers.Sink",
            "--metrics",
            f"tcp:{metricsPort}:interface={LOOPBACK}",
        ],
        readyPort=port,
    )
    server.env = {**os.environ, "TMPDIR": str(temp)}
    idle: list[socket.socket] = []
    try:
        server.start()
        first = server.waitWorkers(2)
        (directory,) = list(temp.iterdir())
        assert directory.name.startswith("esmtpkit-metrics-")
        before = waitScrape(
            metricsPort, lambda s: s.get(key("esmtpkit_connections_active")) == 0
        )
        connections = 24
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(
                pool.map(lambda _: send(port, ["bob@example.org"]), range(connections))
            )
        assert results == [{}] * connections
        total = before.get(key("esmtpkit_connections_total"), 0) + connections
        after = waitScrape(
            metricsPort,
            lambda s: (
                s.get(key("esmtpkit_connections_active")) == 0
                and s.get(key("esmtpkit_connections_total")) == total
            ),
        )
        changed = delta(after, before)
        expected = {
            key("esmtpkit_connections_total"): connections,
            key("esmtpkit_transactions_total", outcome="accepted"): connections,
            key("esmtpkit_messages_received_total"): connections,
            key("esmtpkit_received_bytes_total"): connections * len(MESSAGE),
            key("esmtpkit_message_recipients_count"): connections,
            key("esmtpkit_message_size_bytes_sum"): connections * len(MESSAGE),
            command("EOM", "2xx"): connections,
            command("RCPT", "2xx"): connections,
            command("QUIT", "2xx"): connections,
        }
        assert {k: changed.get(k) for k in expected} == expected
        assert after[key("esmtpkit_build_info", version="0.1.0")] == 1
        assert any(p.name.startswith("counter_") for p in directory.iterdir())

        # Three idle connections, then both workers killed.
        for _ in range(3):
            sock = socket.create_connection((LOOPBACK, port), timeout=10)
            idle.append(sock)
            replies, _ = readReplies(sock, 1)
            assert replies and replies[0].code == 220
        waitScrape(
            metricsPort, lambda s: s.get(key("esmtpkit_connections_active")) == 3
        )
        for pid in first:
            killQuietly(pid, signal.SIGKILL)
        replaced = waitFor(
            lambda: (lambda w: w if len(w) == 2 and not w & first else None)(
                server.workers()
            ),
            20,
        )
        assert replaced, f"workers not replaced:\n{server.tail()}"
        final = waitScrape(
            metricsPort, lambda s: s.get(key("esmtpkit_connections_active")) == 0
        )
        assert final[key("esmtpkit_connections_total")] == total + 3
        assert (
            final[key("esmtpkit_messages_received_total")]
            == after[key("esmtpkit_messages_received_total")]
        )
    finally:
        for sock in idle:
            sock.close()
        server.stop()
    assert waitFor(lambda: not directory.exists(), 10), list(directory.iterdir())
    assert list(temp.iterdir()) == []
    assert "Traceback" not in server.output(), server.tail()
