"""
Start-up that fails fast, with real twistd processes on 127.0.0.1 and unix
sockets in temporary directories:

  - a listener that cannot be opened (the port taken, a unix socket in a
    missing, unwritable or not-a-directory place, a privileged port without
    the right) stops C{twistd esmtpkit} in the foreground, as a daemon and
    with C{--workers 2}, and C{python -m esmtpkit}, with exit status 1 and
    exactly one line, C{esmtpkit: cannot listen on DESCRIPTION: REASON};
    no process is left (none has its working directory in the test's
    directory), no pid file, and a unix socket opened before the failure is
    removed again;
  - the listeners are opened before twistd forks, and the daemon (and a
    daemon supervising workers) serves on them afterwards, owning the unix
    socket's lock;
  - with C{--rundir}, where they open only when the service starts, the
    failure still stops start-up (foreground: the same line; daemon:
    twistd's message, the line in the log);
  - an endpoint that listens only later and fails logs the line;
  - C{--handler} naming a module that cannot be imported: one line that
    names the module and says twistd does not look in the current
    directory, no usage text; a module that raises on import shows that
    exception.

Without root, the permission cases use a directory the user cannot write
and port 1; as root (which may write anywhere and bind any port), twistd
runs under C{setpriv} without the capabilities that allow it
(C{dac_override}, C{dac_read_search}, C{net_bind_service}).

Every process started is stopped by its PID in a C{finally}; every wait is
bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol

from esmtpkit.server.listeners import CannotListen, ListenerService, reason
from esmtpkit.server.service import ESMTPService
from esmtpkit.server.startup import StartupError, resolveName

from .helpers import (
    LOOPBACK,
    freePort,
    probeSMTP,
    processesIn,
    twistdExecutable,
    waitGone,
)

SINK = ["--handler", "esmtpkit.handlers.Sink"]

# -- processes ----------------------------------------------------------------


def killLeftovers(folder: Path) -> None:
    """
    SIGKILL, by PID, any process still running in C{folder}.
    """
    for pid in processesIn(folder):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    waitGone(folder, 5.0)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """
    The test's working directory; at the end, any process left in it is
    killed (and the test has already failed if it found one).
    """
    try:
        yield tmp_path
    finally:
        killLeftovers(tmp_path)


def withoutPrivileges() -> list[str]:
    """
    A command prefix that runs a program without the rights to write into a
    directory it cannot write, or to bind a port under 1024: nothing for a
    user who has not got them anyway, C{setpriv} dropping them for root.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to test as root"
    return [
        setpriv,
        "--bounding-set=-dac_override,-dac_read_search,-net_bind_service",
        "--",
    ]


def run(
    args: Sequence[str],
    cwd: Path,
    *,
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """
    Run C{args} (C{twistd} when it starts with an option or C{esmtpkit}) to
    completion, with a timeout.
    """
    command = list(args)
    if command[0] != sys.executable:
        command = [twistdExecutable(), *command]
    return subprocess.run(
        [*prefix, *command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def occupied() -> tuple[socket.socket, int]:
    """
    A socket listening on a loopback port, and the port.
    """
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


# -- listeners that cannot be opened ----------------------------------------------


def _unwritable(folder: Path) -> str:
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return f"unix:{locked}/esmtpkit.sock"


def _notADirectory(folder: Path) -> str:
    (folder / "file").write_bytes(b"")
    return f"unix:{folder}/file/esmtpkit.sock"


CASES: dict[str, Any] = {
    "port-in-use": (None, "address already in use"),
    "unix-missing-directory": (
        lambda folder: f"unix:{folder}/missing/esmtpkit.sock",
        "no such file or directory",
    ),
    "unix-unwritable-directory": (_unwritable, "permission denied"),
    "unix-not-a-directory": (_notADirectory, "not a directory"),
    "privileged-port": (
        lambda folder: f"tcp:1:interface={LOOPBACK}",
        "permission denied",
    ),
}

MODES: dict[str, list[str]] = {
    "foreground": ["-n", "--pidfile="],
    "daemon": ["--pidfile=twistd.pid", "--logfile=twistd.log"],
    "workers": ["-n", "--pidfile="],
}


def _assertOneLine(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.splitlines() == [line], result.stderr
    assert result.stdout == "", result.stdout


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", list(CASES))
def test_cannotListen(folder: Path, mode: str, case: str) -> None:
    """
    In the foreground, as a daemon and with --workers 2, a listener that
    cannot be opened stops twistd within seconds with exit status 1 and
    one line on standard error (nothing on standard output, no traceback);
    no process is left running, and the daemon writes no pid file or log.
    """
    make, why = CASES[case]
    blocker = None
    if make is None:
        blocker, port = occupied()
        description = f"tcp:{port}:interface={LOOPBACK}"
    else:
        description = make(folder)
    extra = ["--workers", "2"] if mode == "workers" else []
    prefix = withoutPrivileges() if "unwritable" in case or "privileged" in case else []
    try:
        started = time.monotonic()
        result = run(
            [*MODES[mode], "esmtpkit", *SINK, *extra, "--port", description],
            folder,
            prefix=prefix,
        )
        elapsed = time.monotonic() - started
    finally:
        if blocker is not None:
            blocker.close()
    _assertOneLine(result, f"esmtpkit: cannot listen on {description}: {why}")
    assert elapsed < 20
    assert waitGone(folder) == []
    assert not (folder / "twistd.pid").exists()
    assert not (folder / "twistd.log").exists()


def test_cannotListenWithPythonDashM(folder: Path) -> None:
    """
    C{python -m esmtpkit} stops the same way: the one line, exit status 1.
    """
    blocker, port = occupied()
    description = f"tcp:{port}:interface={LOOPBACK}"
    try:
        result = run(
            [sys.executable, "-m", "esmtpkit", *SINK, "--port", description], folder
        )
    finally:
        blocker.close()
    _assertOneLine(
        result, f"esmtpkit: cannot listen on {description}: {'address already in use'}"
    )
    assert waitGone(folder) == []


@pytest.mark.parametrize("mode", list(MODES))
def test_earlierListenersClosedAgain(folder: Path, mode: str) -> None:
    """
    When the second listener fails, the first (a unix socket) is closed
    again: its socket file and lock are gone, so the next start is not
    stopped by them; and the message names the listener that failed, in
    the order given.
    """
    blocker, port = occupied()
    sock = folder / "lmtp.sock"
    description = f"tcp:{port}:interface={LOOPBACK}"
    extra = ["--workers", "2"] if mode == "workers" else []
    try:
        result = run(
            [
                *MODES[mode],
                "esmtpkit",
                *SINK,
                *extra,
                "--lmtp",
                f"unix:{sock}",
                "--port",
                description,
            ],
            folder,
        )
    finally:
        blocker.close()
    _assertOneLine(
        result, f"esmtpkit: cannot listen on {description}: address already in use"
    )
    assert waitGone(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == []


def test_secondServerOnTheSameUnixSocket(folder: Path) -> None:
    """
    A daemon opened its unix socket before forking and owns its lock
    afterwards (the lock names the daemon's PID, not the process that
    exited): a second server on the same path is refused with one line, and
    the first keeps its socket; stopping the daemon removes socket and lock.
    """
    sock = folder / "s.sock"
    port = freePort()
    started = run(
        [
            "--pidfile=twistd.pid",
            "--logfile=twistd.log",
            "esmtpkit",
            *SINK,
            "--port",
            f"tcp:{port}:interface={LOOPBACK}",
            "--port",
            f"unix:{sock}",
        ],
        folder,
    )
    assert started.returncode == 0, started.stderr
    pid = int((folder / "twistd.pid").read_text())
    try:
        assert os.readlink(f"{sock}.lock") == str(pid)
        assert processesIn(folder) == [pid]
        second = run(
            ["-n", "--pidfile=", "esmtpkit", *SINK, "--port", f"unix:{sock}"], folder
        )
        _assertOneLine(
            second,
            f"esmtpkit: cannot listen on unix:{sock}: address already in use "
            "(its lock file is held)",
        )
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(sock))
            assert client.recv(100).startswith(b"220 ")
    finally:
        os.kill(pid, signal.SIGTERM)
    assert waitGone(folder) == []
    assert not sock.exists()
    assert not Path(f"{sock}.lock").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_daemonServesOnSocketsOpenedBeforeFork(folder: Path, workers: int) -> None:
    """
    The daemon (and a daemon supervising two workers) answers SMTP on the
    port opened before the fork; twistd exits 0 at once; SIGTERM to the pid
    in the pid file stops everything.
    """
    port = freePort()
    extra = ["--workers", str(workers)] if workers > 1 else []
    result = run(
        [
            "--pidfile=twistd.pid",
            "--logfile=twistd.log",
            "esmtpkit",
            *SINK,
            *extra,
            "--port",
            f"tcp:{port}:interface={LOOPBACK}",
        ],
        folder,
    )
    assert result.returncode == 0, result.stderr
    pid = int((folder / "twistd.pid").read_text())
    try:
        deadline = time.monotonic() + 20
        while not probeSMTP(port, timeout=1.0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probeSMTP(port), (folder / "twistd.log").read_text()
        assert pid in processesIn(folder)
        assert len(processesIn(folder)) == 1 + (workers if workers > 1 else 0)
    finally:
        os.kill(pid, signal.SIGTERM)
    assert waitGone(folder) == []
    assert not (folder / "twistd.pid").exists()


# -- listening when the service starts (--rundir) -------------------------------------


def test_rundirForegroundFailsWithTheLine(folder: Path) -> None:
    """
    With --rundir the listeners open when the service starts; a failure
    there still ends twistd with status 1 and the line on standard error
    (and in the log, on standard output), without a traceback.
    """
    (folder / "run").mkdir()
    blocker, port = occupied()
    description = f"tcp:{port}:interface={LOOPBACK}"
    try:
        result = run(
            [
                "-n",
                "--pidfile=",
                f"--rundir={folder / 'run'}",
                "esmtpkit",
                *SINK,
                "-p",
                description,
            ],
            folder,
        )
    finally:
        blocker.close()
    line = f"esmtpkit: cannot listen on {description}: address already in use"
    assert result.returncode == 1
    assert result.stderr.splitlines() == [line], result.stderr
    assert line in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert waitGone(folder) == []


def test_rundirDaemonFails(folder: Path) -> None:
    """
    A daemon with --rundir fails after the fork: twistd's parent exits 1
    with its own message quoting the error, the log has the line, and the
    daemon is gone with its pid file.
    """
    (folder / "run").mkdir()
    blocker, port = occupied()
    description = f"tcp:{port}:interface={LOOPBACK}"
    try:
        result = run(
            [
                f"--pidfile={folder / 'twistd.pid'}",
                f"--logfile={folder / 'twistd.log'}",
                f"--rundir={folder / 'run'}",
                "esmtpkit",
                *SINK,
                "-p",
                description,
            ],
            folder,
        )
    finally:
        blocker.close()
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr, result.stderr
    assert waitGone(folder) == []
    log = (folder / "twistd.log").read_text()
    assert f"esmtpkit: cannot listen on {description}: address already in use" in log
    assert not (folder / "twistd.pid").exists()


# -- in-process ----------------------------------------------------------------


def test_reasonWords() -> None:
    """
    The reason is the error's own text, in lower case, for each kind.
    """
    error = CannotListenError("127.0.0.1", 25, OSError(98, "Address already in use"))
    assert reason(error) == "address already in use"
    assert reason(PermissionError(13, "Permission denied")) == "permission denied"
    assert reason("Nope.") == "nope"
    message = CannotListen("tcp:25", error).message
    assert message == "esmtpkit: cannot listen on tcp:25: address already in use"


def test_serviceListenClosesWhatItOpened(tmp_path: Path) -> None:
    """
    ESMTPService.listen raises CannotListen for the first listener that
    fails, and closes the ones it had opened (the unix socket file is gone).
    """
    blocker, port = occupied()
    sock = tmp_path / "a.sock"
    service = ESMTPService(
        Protocol,  # never called: nothing connects
        [f"unix:{sock}:lockfile=0", f"tcp:{port}:interface={LOOPBACK}"],
    )
    try:
        with pytest.raises(CannotListen) as raised:
            service.listen()
    finally:
        blocker.close()
    assert raised.value.description == f"tcp:{port}:interface={LOOPBACK}"
    assert not sock.exists()
    assert all(s.port is None for s in service if isinstance(s, ListenerService))


class _LaterEndpoint:
    """
    An endpoint whose listen fires only when told.
    """

    def __init__(self) -> None:
        self.waiting: Deferred[Any] = Deferred()

    def listen(self, factory: Any) -> Deferred[Any]:
        return self.waiting


def test_laterListenFailureLogged(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An endpoint that listens later and fails: the line is logged at
    critical level, and with exitOnFailure the process is sent SIGTERM
    (here: the kill is recorded, not done).
    """
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append((pid, sig)))
    try:
        endpoint = _LaterEndpoint()
        listener = ListenerService(endpoint, Factory(), "later:thing")  # type: ignore[arg-type]
        listener.exitOnFailure = True
        listener.startService()
        assert listener.port is None and kills == []
        endpoint.waiting.errback(
            CannotListenError("", 0, OSError(98, "Address already in use"))
        )
    finally:
        globalLogPublisher.removeObserver(events.append)
    critical = [
        e
        for e in events
        if e.get("log_level") is not None and e["log_level"].name == "critical"
    ]
    assert [e["message"] for e in critical] == [
        "esmtpkit: cannot listen on later:thing: address already in use"
    ]
    assert kills == [(os.getpid(), signal.SIGTERM)]


def test_laterListenCancelledOnStop() -> None:
    """
    Stopped before a later listen fires: the listen is cancelled, and
    nothing is logged as a failure.
    """
    endpoint = _LaterEndpoint()
    listener = ListenerService(endpoint, Factory(), "later:thing")  # type: ignore[arg-type]
    listener.startService()
    listener.stopService()
    assert endpoint.waiting.called
    assert listener.port is None


# -- --handler that cannot be imported -------------------------------------------------


def _handlerRun(
    folder: Path, name: str, pythonPath: bool
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonPath:
        env["PYTHONPATH"] = "."
    return run(["-n", "--pidfile=", "esmtpkit", "--handler", name], folder, env=env)


def _assertHandlerLine(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    assert "Usage" not in result.stderr and "--port" not in result.stderr
    return lines[0]


def test_handlerModuleNotFound(folder: Path) -> None:
    """
    A --handler whose module is nowhere: one line naming the module, with
    the hint that twistd does not look in the current directory, and no
    usage text.
    """
    line = _assertHandlerLine(_handlerRun(folder, "myhandler.X", pythonPath=False))
    assert line.startswith(
        "esmtpkit: --handler myhandler.X: no module named 'myhandler'"
    )
    assert "twistd does not look in the current directory" in line
    assert "PYTHONPATH=." in line


def test_handlerModuleInCurrentDirectory(folder: Path) -> None:
    """
    The module is in the current directory: without PYTHONPATH=. it is not
    found (the same line); with it, the server starts far enough to listen.
    """
    (folder / "myhandler.py").write_text(
        "from esmtpkit import ESMTPHandler\n\nclass X(ESMTPHandler):\n    pass\n"
    )
    line = _assertHandlerLine(_handlerRun(folder, "myhandler.X", pythonPath=False))
    assert "no module named 'myhandler'" in line and "PYTHONPATH=." in line
    blocker, port = occupied()
    env = {**os.environ, "PYTHONPATH": "."}
    try:
        result = run(
            [
                "-n",
                "--pidfile=",
                "esmtpkit",
                "--handler",
                "myhandler.X",
                "-p",
                f"tcp:{port}:interface={LOOPBACK}",
            ],
            folder,
            env=env,
        )
    finally:
        blocker.close()
    # The handler was found: start-up got as far as the listener.
    assert "cannot listen on" in _assertHandlerLine(result)


def test_handlerModuleRaises(folder: Path) -> None:
    """
    A module that raises on import: the line shows that exception and where
    it was raised, not "not found".
    """
    (folder / "badhandler.py").write_text(
        "x = 1\nraise RuntimeError('no config file')\n"
    )
    line = _assertHandlerLine(_handlerRun(folder, "badhandler.X", pythonPath=True))
    assert line == (
        "esmtpkit: --handler badhandler.X: importing badhandler failed: "
        f"RuntimeError: no config file (at {folder / 'badhandler.py'}:2)"
    )


def test_handlerModuleMissingDependency(folder: Path) -> None:
    """
    A module that imports something missing: the missing one is named, as
    the module's own import error.
    """
    (folder / "dephandler.py").write_text("import no_such_dependency_xyz\n")
    line = _assertHandlerLine(_handlerRun(folder, "dephandler.X", pythonPath=True))
    assert "importing dephandler failed: ModuleNotFoundError: " in line
    assert "no_such_dependency_xyz" in line
    assert "no module named 'dephandler'" not in line


def test_handlerUnderPythonDashM(folder: Path) -> None:
    """
    python -m puts the current directory on the path: the module there is
    found, and a missing one gets no hint about twistd.
    """
    (folder / "myhandler.py").write_text("raise RuntimeError('found me')\n")
    found = _assertHandlerLine(
        run([sys.executable, "-m", "esmtpkit", "--handler", "myhandler.X"], folder)
    )
    assert "importing myhandler failed: RuntimeError: found me" in found
    missing = _assertHandlerLine(
        run([sys.executable, "-m", "esmtpkit", "--handler", "nothere.X"], folder)
    )
    assert missing == "esmtpkit: --handler nothere.X: no module named 'nothere'"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("foo", "--handler foo: not a dotted name of the form module.Name"),
        ("a..b", "--handler a..b: not a dotted name of the form module.Name"),
        (
            "esmtpkit.handlers.Nope",
            "--handler esmtpkit.handlers.Nope: "
            "esmtpkit.handlers has no attribute 'Nope'",
        ),
        (
            "esmtpkit.nothere.X",
            "--handler esmtpkit.nothere.X: no module named 'esmtpkit.nothere'",
        ),
    ],
)
def test_resolveNameErrors(name: str, message: str) -> None:
    """
    Names that are not dotted, attributes and sub-modules that are not
    there: one message each.
    """
    with pytest.raises(StartupError) as raised:
        resolveName(name)
    assert raised.value.message == message
    assert raised.value.code == "esmtpkit: " + message


def test_resolveNameFinds() -> None:
    """
    Classes in modules and packages, and attributes of classes.
    """
    from esmtpkit.handlers import Maildir, Sink

    assert resolveName("esmtpkit.handlers.Sink") is Sink
    assert resolveName("esmtpkit.handlers.maildir.Maildir") is Maildir
    assert resolveName("esmtpkit.handlers.Maildir.fromOptions") == Maildir.fromOptions


@pytest.mark.parametrize("mode", list(MODES))
def test_metricsPortInUse(folder: Path, mode: str) -> None:
    """
    A --metrics endpoint that cannot be opened stops start-up like any
    listener: one line naming it, exit status 1, no process left, and the
    SMTP listener (a unix socket, opened first) closed again.
    """
    blocker, port = occupied()
    sock = folder / "smtp.sock"
    description = f"tcp:{port}:interface={LOOPBACK}"
    extra = ["--workers", "2"] if mode == "workers" else []
    try:
        result = run(
            [
                *MODES[mode],
                "esmtpkit",
                *SINK,
                *extra,
                "--port",
                f"unix:{sock}",
                "--metrics",
                description,
            ],
            folder,
        )
    finally:
        blocker.close()
    _assertOneLine(
        result, f"esmtpkit: cannot listen on {description}: address already in use"
    )
    assert waitGone(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == []
