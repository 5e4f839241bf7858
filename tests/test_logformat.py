"""
The log of real C{twistd esmtpkit} processes: C{--log-format json} (one
JSON object per line, with the refusal and message fields), and under
C{--workers} one timestamp and one prefix per line, a worker's death and
restart at warn. Also the pieces in memory (L{WorkerLog}, L{howEnded},
L{eventAsJSONLine}).

Every server runs in a temporary directory on 127.0.0.1 and is stopped by
PID (L{Server}); every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
from pathlib import Path
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger, LogLevel, eventAsJSON, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit.server.jsonlog import eventAsJSONLine
from esmtpkit.server.workerlog import WorkerLog, howEnded

from .helpers import LOOPBACK, freePort
from .test_workers import Server, tcp, waitFor

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def refuseAndAccept(port: int) -> None:
    """
    One session: a recipient over --max-recipients 1 (452), then the
    message accepted for the first.
    """
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.example", timeout=20) as s:
        s.ehlo()
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("bob@example.net")[0] == 250
        assert s.rcpt("carol@example.net")[0] == 452
        assert s.data(b"Subject: t\r\n\r\nsecret body\r\n")[0] == 250


def jsonLines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def waitForLog(server: Server, predicate: Any, timeout: float = 10.0) -> bool:
    return bool(waitFor(lambda: predicate(server.output()) or None, timeout))


def test_jsonLog(tmp_path: Path) -> None:
    """
    C{--log-format json}: every line of the output is a JSON object; the
    refusal and the message are objects with their documented fields, the
    body is nowhere.
    """
    port = freePort()
    options = ["--log-format", "json", "--port", tcp(port), "--max-recipients", "1"]
    options += ["--handler", "esmtpkit.handlers.Sink"]
    with Server(tmp_path, options, port) as server:
        refuseAndAccept(port)
        assert waitForLog(server, lambda out: '"disconnect"' in out), server.tail()
    objects = jsonLines(server.output())
    assert all({"time", "level", "namespace", "message"} <= set(o) for o in objects)
    [reject] = [o for o in objects if o.get("event") == "reject"]
    assert reject["level"] == "info"
    assert reject["command"] == "RCPT"
    assert reject["client"] == "127.0.0.1"
    assert reject["helo"] == "client.example"
    assert reject["sender"] == "alice@example.org"
    assert reject["recipients"] == ["carol@example.net"]
    assert (reject["code"], reject["enhanced"]) == (452, "4.5.3")
    assert reject["limit"] == "recipients"
    assert reject["session"] in reject["message"]
    [accepted] = [o for o in objects if o.get("event") == "message"]
    assert accepted["recipients"] == ["bob@example.net"]
    assert accepted["transaction"].startswith(accepted["session"] + ".")
    assert accepted["verdict"] == "accepted"
    assert "secret body" not in server.output()


def test_badLogFormat(tmp_path: Path) -> None:
    """
    An unknown --log-format is a usage error.
    """
    from .test_workers import runToCompletion

    status, output = runToCompletion(tmp_path, ["--log-format", "xml"])
    assert status not in (0, None)
    assert "--log-format: 'xml' is not text or json" in output


def test_workerKilledLogged(tmp_path: Path) -> None:
    """
    Under --workers: each line has one timestamp and one bracketed prefix
    (the worker's name for its lines); a worker killed with SIGKILL gives a
    warn line naming the signal and a warn line for its restart, with the
    new PID.
    """
    port = freePort()
    options = ["--workers", "2", "--port", tcp(port), "--max-recipients", "1"]
    options += ["--handler", "esmtpkit.handlers.Sink"]
    with Server(tmp_path, options, port) as server:
        workers = server.waitWorkers(2)
        refuseAndAccept(port)
        assert waitForLog(server, lambda out: "disconnected" in out), server.tail()
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> set[int] | None:
            found = server.workers()
            return found if len(found) == 2 and victim not in found else None

        now = waitFor(replaced, 10)
        assert now, server.tail()
        newcomer = (now - workers).pop()
        assert waitForLog(server, lambda out: f"(pid {newcomer})" in out), server.tail()
        output = server.output()
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        assert len(TIMESTAMP.findall(line)) == 1, line
        assert re.match(TIMESTAMP.pattern + r"\S* \[[^\]]+\] \S", line), line
        assert "] [" not in line, line
    died = [line for line in lines if f"(pid {victim}) died" in line]
    assert len(died) == 1, output
    assert "[esmtpkit#warn]" in died[0]
    assert "killed by signal 9 (SIGKILL)" in died[0]
    restarted = [line for line in lines if f"restarted (pid {newcomer})" in line]
    assert len(restarted) == 1 and "[esmtpkit#warn]" in restarted[0], output
    name = re.search(r"esmtpkit (worker-\d) \(pid", died[0])
    assert name and name.group(1) in restarted[0]
    [reject] = [line for line in lines if " reject: RCPT " in line]
    assert re.match(
        TIMESTAMP.pattern + r"\S* \[worker-\d esmtpkit#info\] session ", reject
    ), reject


def test_workersJSON(tmp_path: Path) -> None:
    """
    --workers with --log-format json: every line of the parent's output is
    one JSON object; the workers' lines carry their worker's name.
    """
    port = freePort()
    options = ["--workers", "2", "--log-format", "json", "--port", tcp(port)]
    options += ["--handler", "esmtpkit.handlers.Sink", "--max-recipients", "1"]
    with Server(tmp_path, options, port) as server:
        server.waitWorkers(2)
        refuseAndAccept(port)
        assert waitForLog(server, lambda out: '"disconnect"' in out), server.tail()
    objects = jsonLines(server.output())
    [reject] = [o for o in objects if o.get("event") == "reject"]
    assert re.fullmatch(r"worker-[12]", reject["worker"])
    assert reject["recipients"] == ["carol@example.net"]
    assert any(o["message"].startswith("esmtpkit supervising 2") for o in objects)


class WorkerLogTests(SynchronousTestCase):
    """
    L{WorkerLog} turns a worker's JSON lines back into events.
    """

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.relay = WorkerLog("worker-3", self.events.append)

    def test_jsonEvent(self) -> None:
        """
        A JSON event split across reads becomes one event, with the worker
        in its system and fields.
        """
        seen: list[Any] = []
        Logger(namespace="esmtpkit", observer=seen.append).info(
            "session {session} hi", session="S1"
        )
        data = ("\x1e" + eventAsJSON(seen[0]) + "\n").encode()
        self.relay.outReceived(data[:10])
        self.assertEqual(self.events, [])
        self.relay.outReceived(data[10:])
        [event] = self.events
        self.assertEqual(formatEvent(event), "session S1 hi")
        self.assertEqual(event["worker"], "worker-3")
        self.assertEqual(event["log_system"], "worker-3 esmtpkit#info")
        self.assertEqual(event["log_level"], LogLevel.info)

    def test_plainLines(self) -> None:
        """
        Lines that are not events (a crash on standard error) are events
        of their own, at warn for standard error; an unfinished last line
        comes out on flush.
        """
        self.relay.errReceived(b"Traceback (most recent call last):\n  boom")
        self.assertEqual(len(self.events), 1)
        self.relay.flush()
        self.assertEqual(
            [(formatEvent(e), e["log_level"]) for e in self.events],
            [
                ("Traceback (most recent call last):", LogLevel.warn),
                ("  boom", LogLevel.warn),
            ],
        )

    def test_howEnded(self) -> None:
        """
        A signal by number and name, or the exit status.
        """
        self.assertEqual(
            howEnded(ProcessTerminated(signal=9)), "killed by signal 9 (SIGKILL)"
        )
        self.assertEqual(
            howEnded(ProcessTerminated(exitCode=3)), "exited with status 3"
        )
        self.assertEqual(howEnded(ProcessDone(0)), "exited with status 0")


class JSONLineTests(SynchronousTestCase):
    """
    L{eventAsJSONLine}: the fixed keys, then the event's fields.
    """

    def test_fields(self) -> None:
        seen: list[Any] = []
        log = Logger(namespace="esmtpkit", observer=seen.append)
        log.info("session {session} to={to}", session="S", to=["a@b"], obj=object())
        try:
            raise ZeroDivisionError("x")
        except ZeroDivisionError:
            log.failure("broke")
        first = json.loads(eventAsJSONLine(seen[0]))
        self.assertEqual(first["message"], "session S to=['a@b']")
        self.assertEqual((first["level"], first["namespace"]), ("info", "esmtpkit"))
        self.assertEqual((first["session"], first["to"]), ("S", ["a@b"]))
        self.assertTrue(first["obj"].startswith("<object object"))
        self.assertTrue(first["time"].endswith("Z"))
        self.assertFalse([key for key in first if key.startswith("log_")])
        second = json.loads(eventAsJSONLine(seen[1]))
        self.assertIn("ZeroDivisionError", second["traceback"])
        self.assertNotIn("\n", eventAsJSONLine(seen[1]))


class WorkerFailureTests(SynchronousTestCase):
    """
    A failure logged in a worker keeps its exception's text through the
    JSON form (L{keepFailureText} there, L{WorkerLog} here).
    """

    def test_failureText(self) -> None:
        from esmtpkit.server.workerlog import keepFailureText

        seen: list[Any] = []
        log = Logger(namespace="esmtpkit", observer=seen.append)
        try:
            raise ValueError("the handler broke")
        except ValueError:
            log.failure("session {session} hook EOM failed", session="S")
        keepFailureText(seen[0])
        events: list[dict[str, Any]] = []
        WorkerLog("worker-1", events.append).outReceived(
            ("\x1e" + eventAsJSON(seen[0]) + "\n").encode()
        )
        [event] = events
        traceback = event["log_failure"].getTraceback()
        self.assertIn("ValueError: the handler broke", traceback)
        self.assertNotIn("log_failure_text", event)
