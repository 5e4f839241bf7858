"""
L{TextLogObserver}, the fast text log: the same text as twistd's own
observer (Twisted's C{textFileLogObserver}) for every event, fast path or
not.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher, textFileLogObserver
from twisted.python.failure import Failure

from esmtpkit.core.eventlog import LogObserver
from esmtpkit.reply import Reply
from esmtpkit.server import textlog
from esmtpkit.server.textlog import TextLogObserver
from esmtpkit.session import Recipient, Session, Transaction

from .helpers import PROJECT_ROOT

LEVELS = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error]


def _both() -> tuple[LogPublisher, io.StringIO, io.StringIO]:
    # Two observers: the fast lane is not taken (its held lines would need
    # a reactor turn).
    general, fast = io.StringIO(), io.StringIO()
    publisher = LogPublisher()
    publisher.addObserver(textFileLogObserver(general))
    publisher.addObserver(TextLogObserver(fast, reactor=Clock()))
    return publisher, general, fast


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["esmtpkit", "esmtpkit.x", "other", ""]),
            st.sampled_from(LEVELS),
            text,
            st.booleans(),  # our LogObserver's log_line form
            st.one_of(st.none(), st.sampled_from(["worker-1 esmtpkit#info", "-"])),
            st.floats(min_value=0, max_value=4e9, allow_nan=False),
        ),
        max_size=12,
    )
)
def test_sameTextAsTwistd(events: list[tuple[Any, ...]]) -> None:
    publisher, general, fast = _both()
    for namespace, level, message, asLine, system, when in events:
        fields: dict[str, Any] = {"log_time": when}
        if system is not None:
            fields["log_system"] = system
        log = Logger(observer=publisher, namespace=namespace)
        if asLine:
            # The form LogObserver emits: text ready in a log_line field.
            fields["log_line"] = message
            log.emit(level, "{log_line}", **fields)
        else:
            log.emit(level, "plain {m!r} and {{braces}}", m=message, **fields)
    assert fast.getvalue() == general.getvalue()


def test_eventLogLinesAndFailures() -> None:
    publisher, general, fast = _both()
    observer = LogObserver(Logger(observer=publisher, namespace="esmtpkit"))
    session = Session()
    session.heloName = "client.example"
    transaction = Transaction(
        id="X.1", sender="a@example.org", recipients=[Recipient("b@example.org")]
    )
    observer.connectionOpened(session)
    observer.transactionEnded(
        session, transaction, "accepted", (Reply(250, "OK", enhanced="2.0.0"),)
    )
    observer.connectionClosed(session)
    try:
        raise ZeroDivisionError("no")
    except ZeroDivisionError:
        Logger(observer=publisher).failure("it broke\nbadly", Failure())
    assert fast.getvalue() == general.getvalue()
    assert fast.getvalue().count("\n") > 4
    assert "message X.1 accepted" in fast.getvalue()
    assert "ZeroDivisionError" in fast.getvalue()


def _runPython(script: str) -> subprocess.CompletedProcess[str]:
    # A Python script in a process of its own, from the project's root;
    # it must succeed.
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_twistdUsesIt(tmp_path: Any) -> None:
    """
    C{twistd esmtpkit} logs through a L{TextLogObserver} (the application's
    log observer component), unless --log-format json or --syslog.
    """
    script = (
        "import sys\n"
        "from twisted.application.service import Application\n"
        "from twisted.logger import ILogObserver\n"
        "from esmtpkit.server.tap import Options, makeService\n"
        "class Parent(dict): pass\n"
        "for extra in ([], ['--log-format', 'json']):\n"
        "    options = Options()\n"
        "    options.parent = Parent(nodaemon=True, logfile=None, syslog=False)\n"
        "    options.parseOptions(['--handler', 'esmtpkit.handlers.Sink', '-p',"
        " 'tcp:0:interface=127.0.0.1', *extra])\n"
        "    application = Application('x')\n"
        "    makeService(options).setServiceParent(application)\n"
        "    print(type(ILogObserver(application)).__name__)\n"
    )
    done = _runPython(script)
    assert done.stdout.split() == ["TextLogObserver", "JSONLogObserver"]


def _withoutStamp(text: str) -> list[str]:
    # The timestamp that begins each line (continuation lines have none).
    return [re.sub(r"^\d{4}-\d\d-\d\dT\S+ ", "", line) for line in text.split("\n")]


@settings(max_examples=100, deadline=None)
@given(
    helo=st.one_of(st.none(), text),
    sender=text,
    recipients=st.lists(text, min_size=1, max_size=3),
    size=st.integers(min_value=0, max_value=10**9),
    codes=st.lists(st.sampled_from([250, 251, 452, 550]), min_size=1, max_size=3),
    messages=st.integers(min_value=0, max_value=50),
)
def test_fastLaneSameLines(
    helo: str | None,
    sender: str,
    recipients: list[str],
    size: int,
    codes: list[int],
    messages: int,
) -> None:
    """
    With a TextLogObserver as the log's only observer, LogObserver writes
    its connect, message and disconnect lines straight to it: the same text
    as through a log event (compared without the timestamps, which are
    taken at different moments).
    """
    session = Session()
    session.heloName = helo
    session.messages = messages
    transaction = Transaction(
        id=f"{session.id}.1",
        sender=sender,
        recipients=[Recipient(r) for r in recipients],
    )
    transaction.size = size
    replies = tuple(Reply(code, "x") for code in codes)
    outcome = "accepted" if all(c < 300 for c in codes) else "partial"

    outputs = []
    for observers in (1, 2):
        out = io.StringIO()
        clock = Clock()
        publisher = LogPublisher()
        publisher.addObserver(TextLogObserver(out, reactor=clock))
        if observers == 2:
            publisher.addObserver(lambda event: None)  # the general lane
        observer = LogObserver(Logger(observer=publisher, namespace="esmtpkit"))
        assert (observer._direct() is not None) == (observers == 1)
        observer.connectionOpened(session)
        observer.transactionEnded(session, transaction, outcome, replies)
        observer.connectionClosed(session)
        clock.advance(0)  # the end of the reactor turn
        outputs.append(_withoutStamp(out.getvalue()))
    assert outputs[0] == outputs[1]
    assert sum(line.startswith("[esmtpkit#info] ") for line in outputs[0]) == 3


class _Recording(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_fastLaneFlushesOncePerTurn() -> None:
    """
    Finished lines are held, then written and flushed at once, at the end
    of the reactor turn that made them; an event of any other kind writes
    what is held, then itself, and flushes at once.
    """
    clock = Clock()
    out = _Recording()
    observer = TextLogObserver(out, reactor=clock)
    for n in range(3):
        observer.writeLine("esmtpkit", LogLevel.info, f"line {n}")
    assert out.flushes == 0 and out.getvalue() == ""
    clock.advance(0)
    assert out.flushes == 1 and out.getvalue().count("\n") == 3
    clock.advance(0)
    assert out.flushes == 1  # nothing new: no second flush
    observer.writeLine("esmtpkit", LogLevel.info, "again")
    Logger(observer=observer, namespace="esmtpkit").warn("at once")
    assert out.flushes == 2
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines[-2:]] == ["again", "at once"]
    clock.advance(0)
    assert out.flushes == 2  # nothing held any more


def test_heldLinesWrittenAtShutdown() -> None:
    """
    Lines made in the reactor's last turn (by a shutdown trigger, as the
    drain's disconnect lines are) are written by its shutdown, in a real
    process on the real reactor.
    """
    script = (
        "import sys\n"
        "from twisted.internet import reactor\n"
        "from twisted.logger import LogLevel\n"
        "from esmtpkit.server.textlog import TextLogObserver\n"
        "observer = TextLogObserver(sys.stdout)\n"
        "observer.writeLine('esmtpkit', LogLevel.info, 'first')\n"
        "reactor.addSystemEventTrigger('before', 'shutdown',"
        " lambda: observer.writeLine('esmtpkit', LogLevel.info, 'last words'))\n"
        "reactor.callWhenRunning(reactor.stop)\n"
        "reactor.run()\n"
    )
    done = _runPython(script)
    lines = [line.split("] ", 1)[1] for line in done.stdout.splitlines()]
    assert lines == ["first", "last words"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),  # through writeLine (else as a log event)
            st.sampled_from(["esmtpkit", "other"]),
            st.sampled_from([LogLevel.info, LogLevel.warn]),
            st.sampled_from(["line", "two\nlines", "x"]),
            st.sampled_from([1e9, 1e9 + 0.5, 1e9 + 1, 1e9 + 7200.25]),
        ),
        max_size=15,
    )
)
def test_fastLaneAndEventsInterleaved(
    writes: list[tuple[bool, str, LogLevel, str, float]],
) -> None:
    """
    Lines of writeLine and events written the general way, in any order,
    over several seconds, namespaces and levels: each is written as twistd
    would write the event (the timestamp and prefix writeLine keeps from
    line to line are never stale).
    """
    general, fast = io.StringIO(), io.StringIO()
    reference = textFileLogObserver(general)
    clock = Clock()
    observer = TextLogObserver(fast, reactor=clock)
    now = [0.0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(textlog.time, "time", lambda: now[0])
        for direct, namespace, level, message, when in writes:
            now[0] = when
            event = {
                "log_namespace": namespace,
                "log_level": level,
                "log_time": when,
                "log_format": "{log_line}",
                "log_line": message,
            }
            reference(dict(event))
            if direct:
                observer.writeLine(namespace, level, message)
            else:
                observer(event)
    clock.advance(0)
    assert fast.getvalue() == general.getvalue()
