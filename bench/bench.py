"""
The esmtpkit benchmark: esmtpkit beside aiosmtpd, twisted.mail and Postfix's
smtp-sink, on the same load, in one run. Run it through bench/run, which sets
up the virtualenv and the Postfix client tools first.

Every measurement starts a fresh server on a free loopback port (so its peak
RSS belongs to that scenario alone), sends it one warm-up message, runs the
scenario's load, checks that what the load was told had been delivered really
was (smtp-source's exit status, the replies our own client counted, and the
server's own count where it keeps one), and stops the server by its PID.
Servers are pinned to core 0 and clients to the other cores when there are
two or more. Each round runs every server through every scenario, in an
order that rotates between rounds; ratios to esmtpkit are taken within the
same round. With --baseline REV, esmtpkit at revision REV runs beside the
checkout's as one more server, esmtpkit-base, and the report compares the two.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent
MiB = 1024 * 1024
REFERENCE = "esmtpkit"  # ratios are taken to this server
DURABLE = "esmtpkit-maildir"  # esmtpkit acknowledging after an fsync...
DURABLE_PEER = "postfix"  # ...beside Postfix doing the same (issue 12)
BASE = "esmtpkit-base"  # esmtpkit at the --baseline revision
CODECHECK = HERE / "codecheck"  # its sitecustomize records the code a server ran
CODE_RECORD = "ESMTPKIT_BENCH_CODE"  # ...into the folder this variable names
CODE_SIGNAL = signal.SIGRTMIN + 3  # ...when it gets this signal


# -- profiles -----------------------------------------------------------------


@dataclass
class Profile:
    """
    How much load each scenario sends.
    """

    rounds: int
    a_messages: int  # A: 50 sessions, 1 KiB messages, kept-open connections
    b_messages: int  # B: one message per connection
    c_messages: int  # C: 10 MiB messages, 4 sessions
    d_size: int  # D: 20 clients stream one message of this size each
    e_connections: int  # E: idle connections held
    f_messages: int  # F and F2: pipelined transactions
    g_messages: int  # G: transactions over STARTTLS
    h_commands: int  # H: RSET commands sent by a reader that stalls
    a_sessions: int = 50
    b_sessions: int = 10
    c_sessions: int = 4
    c_size: int = 10 * MiB
    d_clients: int = 20
    e_probes: int = 5
    e2_connections: int = 10_000  # E2: many idle connections held
    f_sessions: int = 10
    f_batch: int = 10  # F2: whole messages per write
    g_sessions: int = 10
    h_pause: float = 2.0
    h_read_rate: int = 200_000  # H: replies read per second after the pause


QUICK = Profile(
    rounds=2,
    a_messages=2000,
    b_messages=600,
    c_messages=8,
    d_size=4 * MiB,
    e_connections=2000,
    e2_connections=0,  # E2 holds 10,000 connections: full run only
    f_messages=6000,
    g_messages=500,
    h_commands=200_000,
    h_pause=1.0,
)
FULL = Profile(
    rounds=3,
    a_messages=10000,
    b_messages=3000,
    c_messages=40,
    d_size=20 * MiB,
    e_connections=2000,
    f_messages=20000,
    g_messages=2000,
    h_commands=3_000_000,
)


# -- processes: start, measure, stop ------------------------------------------

LIVE: dict[int, subprocess.Popen[bytes]] = {}  # every process we started


def stopProcess(proc: subprocess.Popen[bytes], grace: float = 5.0) -> int | None:
    """
    Stop a process we started, by its PID: SIGTERM, then SIGKILL after
    C{grace} seconds. Any child it left behind is killed by PID too.
    """
    children = descendants(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(grace)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    LIVE.pop(proc.pid, None)
    return proc.returncode


def stopAll() -> None:
    for proc in list(LIVE.values()):
        stopProcess(proc, grace=2.0)


def parents() -> dict[int, int]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            table[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return table


def descendants(pid: int) -> list[int]:
    table = parents()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, p in table.items() if p == parent]
        found += kids
        frontier += kids
    return found


def listeners(port: int) -> set[int]:
    """
    The PIDs holding a listening socket on 127.0.0.1:PORT (from /proc/net/tcp).
    """
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        pids.add(int(entry))
                        break
    return pids


def memory(pids: list[int], field: str) -> int:
    """
    The sum of a /proc/PID/status field (VmRSS, VmHWM) over C{pids}, in bytes.
    """
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) * 1024
    return total


class Sampler(threading.Thread):
    """
    Samples the server's VmRSS (summed over its process tree) every 10 ms
    and keeps the highest value; runs as long as its C{with} block. For a
    multi-process server the tree is looked up again every second, so a
    worker started (or restarted) meanwhile is counted too.
    """

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = server.rss()
        self._done = threading.Event()

    def run(self) -> None:
        ticks = 0
        while not self._done.wait(0.01):
            ticks += 1
            spec = self.server.spec
            if (not spec.pinned or spec.processTree) and ticks % 100 == 0:
                self.server.refreshPids()
            self.peak = max(self.peak, self.server.rss())

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self.join()


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pinning:
    server: list[str]  # taskset prefix for servers
    client: list[str]  # taskset prefix for clients
    note: str
    anyCore: list[str] = dataclasses.field(default_factory=list)
    """taskset prefix for unpinned servers: this script narrowed its own
    affinity to the client cores, and children inherit it"""


def pinning(enabled: bool) -> Pinning:
    cores = sorted(os.sched_getaffinity(0))
    if not enabled or len(cores) < 2 or not shutil.which("taskset"):
        return Pinning([], [], "not pinned")
    server, clients = cores[0], cores[1:]
    clientList = ",".join(map(str, clients))
    os.sched_setaffinity(0, clients)  # this script and its sampler too
    return Pinning(
        ["taskset", "-c", str(server)],
        ["taskset", "-c", clientList],
        f"servers on core {server}, clients on core(s) {clientList}",
        ["taskset", "-c", ",".join(map(str, cores))],
    )


# -- servers ------------------------------------------------------------------


@dataclass
class ServerSpec:
    """
    One server under test.

    @ivar command: the command line, given the port, a scratch directory,
        the largest message the run sends, and extra arguments (each command
        puts them where its program wants options).
    @ivar tlsArgs: extra arguments that give the server STARTTLS with a
        certificate and key file, or None if it has none (scenario G).
    @ivar delivered: the number of messages the server itself says it
        received, read after it stopped, or None if it keeps no count.
    @ivar scenarios: the keys of the scenarios it takes part in.
    @ivar scenarioArgs: extra arguments for some scenarios only, where the
        load needs them (E's thousands of connections); shown apart in the
        commands section of the report.
    @ivar pinned: pinned to the server core (False for multi-process servers,
        which get every core).
    @ivar env: environment variables set for it (PYTHONPATH for esmtpkit).
    @ivar codeRoot: for an esmtpkit server, the tree whose esmtpkit it must
        run (the checkout, or the --baseline revision's copy); checked after
        every run from the modules the server itself had loaded.
    @ivar processTree: it starts processes as the load comes (Postfix's
        smtpd, cleanup, ...): its tree is looked up again every second, as
        for an unpinned server.
    @ivar launcher: the process started is only a launcher (not measured);
        its descendants are the server.
    @ivar stopGrace: seconds it gets to exit after SIGTERM.
    @ivar optIn: runs only when --servers names it.
    @ivar needsRoot: refused, with a clear error, unless run as root.
    """

    name: str
    command: Callable[[int, Path, int, list[str]], list[str]]
    delivered: Callable[[Path], int | None] = lambda scratch: None
    tlsArgs: Callable[[str, str], list[str]] | None = None
    scenarios: tuple[str, ...] = ("A", "B", "C", "D", "E", "E2", "F", "F2", "G", "H")
    scenarioArgs: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    pinned: bool = True
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    codeRoot: Path | None = None
    processTree: bool = False
    launcher: bool = False
    stopGrace: float = 5.0
    optIn: bool = False
    needsRoot: bool = False


BACKLOG = 1024
"""
The listen backlog asked of every server that lets us set it (the kernel caps
it at net.core.somaxconn). aiosmtpd's command line has no such option, so it
keeps asyncio's default of 100; E opens its connections at most 100 at a time
and B keeps 10 in flight, so no load here needs more.
"""


def esmtpkitCommand(
    *options: str, logLevel: str = "warn"
) -> Callable[[int, Path, int, list[str]], list[str]]:
    def command(port: int, scratch: Path, largest: int, extra: list[str]) -> list[str]:
        cmd = [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "esmtpkit",
            "--port",
            f"tcp:{port}:interface=127.0.0.1:backlog={BACKLOG}",
            "--log-level",
            logLevel,
            *options,
        ]
        if largest > 30 * MiB:  # beyond the default SIZE limit
            cmd += ["--max-message-size", str(2 * largest)]
        cmd += extra
        return [arg.replace("{scratch}", str(scratch)) for arg in cmd]

    return command


def aiosmtpdCommand(
    port: int, scratch: Path, largest: int, extra: list[str]
) -> list[str]:
    cmd = [
        PYTHON,
        "-m",
        "aiosmtpd",
        "-n",
        "-c",
        "aiosmtpd.handlers.Sink",
        "-l",
        f"127.0.0.1:{port}",
    ]
    if largest > 30 * MiB:
        cmd += ["-s", str(2 * largest)]
    return cmd + extra


def twistedMailCommand(
    port: int, scratch: Path, largest: int, extra: list[str]
) -> list[str]:
    assert not extra, "the twisted.mail peer takes no options"
    return [
        PYTHON,
        str(HERE / "peers" / "twisted_mail_sink.py"),
        str(port),
        str(scratch / "stats.json"),
        str(BACKLOG),
    ]


def twistedMailDelivered(scratch: Path) -> int | None:
    stats = scratch / "stats.json"
    return json.loads(stats.read_text())["messages"] if stats.exists() else -1


def smtpSinkCommand(
    port: int, scratch: Path, largest: int, extra: list[str]
) -> list[str]:
    # -c: counters on stdout; -u: required when run as root (drops
    # privileges after binding); the last argument is the listen backlog.
    cmd = [shutil.which("smtp-sink") or "smtp-sink", "-c", *extra]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]
    return cmd + [f"127.0.0.1:{port}", str(BACKLOG)]


def smtpSinkDelivered(scratch: Path) -> int | None:
    counts = re.findall(r"mesg=(\d+)", (scratch / "server.log").read_text())
    return int(counts[-1]) if counts else 0


def esmtpkitTLS(cert: str, key: str) -> list[str]:
    return ["--tls-cert", cert, "--tls-key", key]


SINK = "esmtpkit.handlers.Sink"

ESMTPKIT_SCENARIO_ARGS = {
    # E holds thousands of connections; the default limit is 1000 at once
    # (the per-IP limit of 50 does not apply to loopback by default).
    "E": ["--max-connections", "20000"],
    "E2": ["--max-connections", "20000"],
}


def maildirDelivered(scratch: Path) -> int | None:
    leftovers = os.listdir(scratch / "Maildir" / "tmp")
    if leftovers:  # a message half-written or never committed
        return -len(leftovers)
    return len(os.listdir(scratch / "Maildir" / "new"))


def postfixCommand(
    port: int, scratch: Path, largest: int, extra: list[str]
) -> list[str]:
    assert not extra, "the Postfix peer takes no options"
    return [
        PYTHON,
        str(HERE / "peers" / "postfix_durable.py"),
        str(port),
        str(scratch / "stats.json"),
        str(max(2 * largest, 10240000)),  # message_size_limit
    ]


def postfixDelivered(scratch: Path) -> int | None:
    """
    The messages the private Postfix delivered to discard:, by its log; a
    negative count (the files left) if its queue did not drain.
    """
    stats = scratch / "stats.json"
    if not stats.exists():
        return -1
    found = json.loads(stats.read_text())
    return -found["queued"] if found.get("queued") else found["messages"]


def esmtpkitEnv(tree: Path | None = None) -> dict[str, str]:
    """
    The environment of an esmtpkit server: bench/codecheck on its
    PYTHONPATH (the code check), after C{tree} if given, whose C{esmtpkit}
    package and plugin then come before the checkout's (editable install).
    """
    inherited = os.environ.get("PYTHONPATH")
    path = ([str(tree)] if tree else []) + [str(CODECHECK)]
    return {"PYTHONPATH": os.pathsep.join(path + ([inherited] if inherited else []))}


def servers(
    selected: list[str] | None, baseline: Baseline | None = None
) -> list[ServerSpec]:
    checkout = {"env": esmtpkitEnv(), "codeRoot": REPO}
    specs = [
        ServerSpec(
            "aiosmtpd",
            aiosmtpdCommand,
            tlsArgs=lambda cert, key: [
                "--tlscert",
                cert,
                "--tlskey",
                key,
                "--no-requiretls",
            ],
        ),
        ServerSpec("twisted.mail", twistedMailCommand, twistedMailDelivered),
        ServerSpec(
            "smtp-sink",
            smtpSinkCommand,
            smtpSinkDelivered,
            # -m: connections served at once (default 256)
            scenarioArgs={"E": ["-m", "20000"], "E2": ["-m", "20000"]},
        ),
        ServerSpec(
            REFERENCE,
            esmtpkitCommand("--handler", SINK),
            tlsArgs=esmtpkitTLS,
            scenarioArgs=ESMTPKIT_SCENARIO_ARGS,
            **checkout,
        ),
    ]
    if baseline is not None:
        # The same server, options and pinning, running the code of REV.
        specs.append(
            ServerSpec(
                BASE,
                esmtpkitCommand("--handler", baseline.handler),
                tlsArgs=esmtpkitTLS,
                scenarioArgs=ESMTPKIT_SCENARIO_ARGS,
                env=esmtpkitEnv(baseline.tree),
                codeRoot=baseline.tree,
            )
        )
    specs.append(
        ServerSpec(
            # The price of the default log level: one line per connection,
            # refusal and message (the others log at warn).
            "esmtpkit-info",
            esmtpkitCommand("--handler", SINK, logLevel="info"),
            scenarioArgs=ESMTPKIT_SCENARIO_ARGS,
            scenarios=("A", "B"),
            **checkout,
        )
    )
    specs.append(
        ServerSpec(
            "esmtpkit-maildir",
            esmtpkitCommand("--maildir", "{scratch}/Maildir"),
            maildirDelivered,
            scenarios=("A", "B", "C"),  # it fsyncs every message: disk-bound
            **checkout,
        )
    )
    specs.append(
        ServerSpec(
            # esmtpkit-maildir's durable peer: a private Postfix whose 250
            # follows the fsync of its queue file, delivering to discard:.
            DURABLE_PEER,
            postfixCommand,
            postfixDelivered,
            scenarios=("A", "B", "C"),
            processTree=True,
            launcher=True,
            stopGrace=150.0,  # it drains its queue first
            optIn=True,
            needsRoot=True,
        )
    )
    help = subprocess.run(
        [str(BIN / "twistd"), "esmtpkit", "--help"], capture_output=True, text=True
    ).stdout
    if "--workers" in help:
        specs.append(
            ServerSpec(
                "esmtpkit-2w",
                esmtpkitCommand(
                    "--handler", "esmtpkit.handlers.Sink", "--workers", "2"
                ),
                scenarios=("A",),
                pinned=False,
                **checkout,
            )
        )
    if selected:
        if BASE in selected and baseline is None:
            sys.exit(f"{BASE} needs --baseline REV")
        if baseline is not None and BASE not in selected:
            selected = selected + [BASE]
        unknown = set(selected) - {s.name for s in specs}
        if unknown:
            sys.exit(f"unknown server(s): {', '.join(sorted(unknown))}")
        specs = [s for s in specs if s.name in selected]
    else:
        specs = [s for s in specs if not s.optIn]
    for spec in specs:
        if spec.needsRoot and os.geteuid() != 0:
            sys.exit(f"server {spec.name} needs root (it starts a private Postfix)")
    return specs


def within(paths: list[str] | None, where: Path) -> bool:
    """
    Whether C{paths} (a module's file, or a namespace package's folders)
    are all inside C{where}, and there is at least one.
    """
    return bool(paths) and all(
        Path(p).resolve().is_relative_to(where.resolve()) for p in paths or []
    )


# -- the baseline: esmtpkit at another revision ---------------------------------


@dataclass
class Baseline:
    """
    esmtpkit at another git revision, beside the checkout: REV's whole tree
    (C{git archive}) in a temporary folder outside the repository, run by
    the same twistd with that tree first on PYTHONPATH, so that C{import
    esmtpkit} and Twisted's plugin discovery (twisted/plugins/ of every
    sys.path entry, the first of a name winning) find REV's code before
    the checkout's editable install.
    """

    rev: str  # as given
    commit: str
    subject: str
    tree: Path
    handler: str  # the dotted name of REV's Sink handler
    probe: dict[str, Any]  # where the probe found REV's plugin, tap, handler
    changed: list[str]  # esmtpkit/, twisted/plugins/ files unlike the checkout's


TEMPORARY: list[Path] = []  # folders removed when the run ends, however it ends


def scratchRoot(logs: Path) -> Path:
    """
    The folder of the servers' scratch folders, in the run's log folder
    (removed when the run ends): away from the system's temporary folder,
    where a private Postfix's queue is, and each in a block group of its
    own, so that the inodes freed by another server or an earlier run (see
    L{Server.cleanUp}) are not where a server makes its files.
    """
    root = logs / "scratch"
    if not root.exists():
        root.mkdir(parents=True)
        TEMPORARY.append(root)
        # ext4's "top directory" flag: each folder made in it goes to a
        # block group of its own choosing, not the one where the last run's
        # scratch files were just removed (best effort: ext4 only).
        subprocess.run(["chattr", "+T", str(root)], capture_output=True)
    return root


def removeTemporary() -> None:
    while TEMPORARY:
        shutil.rmtree(TEMPORARY.pop(), ignore_errors=True)


def git(*args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"git {args[0]} failed")
    return proc.stdout.strip()


# Run with the baseline server's environment: what twistd would load.
PROBE = r"""
import importlib, json, sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.reflect import namedAny

def where(module):
    path = getattr(module, "__file__", None)
    return [path] if path else list(getattr(module, "__path__", []))

makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "esmtpkit"]
found = {
    "esmtpkit": where(importlib.import_module("esmtpkit")),
    "plugin": where(sys.modules.get("twisted.plugins.esmtpkit_plugin")),
    "makers": {m.module: where(importlib.import_module(m.module)) for m in makers},
    "handler": None,
}
for name in sys.argv[1:]:
    try:
        value = namedAny(name)
    except Exception:
        continue
    found["handler"] = {"name": name, "file": where(sys.modules[value.__module__])}
    break
print(json.dumps(found))
"""


def makeBaseline(rev: str) -> Baseline:
    """
    Copy REV's tree into a temporary folder and check, in the environment
    its server will get, that twistd's plugin discovery finds REV's plugin
    and the esmtpkit.tap (or whatever module the plugin names) and Sink
    handler of REV's tree. Exits when it does not.
    """
    if rev.startswith("-"):
        sys.exit(f"bench: --baseline {rev}: not a revision")
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RuntimeError:
        sys.exit(f"bench: --baseline {rev}: not a commit of this repository")
    subject = git("log", "-1", "--format=%s", commit)
    top = Path(tempfile.mkdtemp(prefix="esmtpkit-base-"))
    TEMPORARY.append(top)
    tree = top / "tree"
    tree.mkdir()
    archive = subprocess.Popen(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        stdout=subprocess.PIPE,
    )
    untar = subprocess.run(
        ["tar", "-x", "-f", "-", "-C", str(tree)], stdin=archive.stdout
    )
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        sys.exit(f"bench: --baseline {rev}: git archive {commit[:10]} failed")
    if not (tree / "esmtpkit" / "__init__.py").exists():
        sys.exit(f"bench: --baseline {rev}: {commit[:10]} has no esmtpkit package")
    # The Sink handler: where it is now, else wherever REV's tree defines it
    # (its modules may be laid out differently).
    candidates = [SINK] + sorted(
        ".".join(path.relative_to(tree).with_suffix("").parts).removesuffix(".__init__")
        + ".Sink"
        for path in (tree / "esmtpkit").rglob("*.py")
        if re.search(r"^class Sink\b", path.read_text(errors="replace"), re.M)
    )
    proc = subprocess.run(
        [PYTHON, "-P", "-c", PROBE, *candidates],
        env={**os.environ, **esmtpkitEnv(tree)},
        cwd=top,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        sys.exit(
            f"bench: --baseline {rev}: importing its esmtpkit failed:\n"
            + proc.stderr[-3000:]
        )
    probe = json.loads(proc.stdout.splitlines()[-1])
    wrong = [
        f"{what} from {paths}"
        for what, paths, where in [
            ("esmtpkit", probe["esmtpkit"], tree / "esmtpkit"),
            ("plugin", probe["plugin"], tree / "twisted" / "plugins"),
            *[(m, p, tree / "esmtpkit") for m, p in probe["makers"].items()],
            ("handler", (probe["handler"] or {}).get("file"), tree / "esmtpkit"),
        ]
        if not within(paths, where)
    ]
    if not probe["makers"]:
        wrong.append("no esmtpkit plugin found")
    if wrong:
        sys.exit(
            f"bench: --baseline {rev}: its server would not run {commit[:10]}'s "
            f"code (tree {tree}): " + "; ".join(wrong)
        )
    changed = git(
        "diff",
        "--name-only",
        "--no-renames",
        commit,
        "--",
        "esmtpkit",
        "twisted/plugins",
    ).splitlines()
    return Baseline(
        rev, commit, subject, tree, probe["handler"]["name"], probe, changed
    )


class Server:
    """
    A running server: started on a free port, ready when it greets.
    """

    def __init__(
        self,
        spec: ServerSpec,
        pin: Pinning,
        logs: Path,
        label: str,
        largest: int,
        extra: list[str],
    ) -> None:
        self.spec = spec
        self.scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=scratchRoot(logs)))
        self.port = freePort()
        self.command = spec.command(self.port, self.scratch, largest, extra)
        self.command = (pin.server if spec.pinned else pin.anyCore) + self.command
        self.logPath = logs / f"{label}.log"
        self.features: dict[str, str] = {}
        self.pids: list[int] = []
        self.listenerPids: list[int] = []
        # Its output goes to server.log in the scratch directory (smtp-sink's
        # counters are read from there), copied to the logs folder at stop.
        self._log = open(self.scratch / "server.log", "wb")
        self.env = dict(spec.env)  # what it gets beyond our own environment
        if spec.codeRoot is not None:
            (self.scratch / "code").mkdir()
            self.env[CODE_RECORD] = str(self.scratch / "code")
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.scratch,
            env=env,
            start_new_session=True,
        )
        LIVE[self.proc.pid] = self.proc
        try:
            self._waitReady()
        except BaseException:
            self.stop()
            raise

    def _waitReady(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited ({self.proc.returncode}) at start:\n"
                    + self.logTail()
                )
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as smtp:
                    smtp.ehlo("warmup.example.org")
                    self.features = dict(smtp.esmtp_features)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)
                continue
            if self.spec.pinned:
                self.refreshPids()
            else:
                self._settleTree(deadline)
            self.listenerPids = sorted(listeners(self.port))
            if not set(self.listenerPids) <= set(self.pids):
                raise RuntimeError(
                    f"{self.spec.name}: port {self.port} is held by "
                    f"{self.listenerPids}, not by what we started ({self.pids})"
                )
            return
        raise RuntimeError(
            f"{self.spec.name} not ready in {timeout} s:\n" + self.logTail()
        )

    def refreshPids(self) -> None:
        """
        The PIDs measured: the process we started and all its descendants.
        """
        below = descendants(self.proc.pid)
        self.pids = below if self.spec.launcher else [self.proc.pid] + below

    def _settleTree(self, deadline: float) -> None:
        """
        A multi-process server may start its workers after the first one
        greets: wait until its process tree has not changed for a second.
        """
        self.refreshPids()
        stableSince = time.monotonic()
        while time.monotonic() < min(deadline, stableSince + 10):
            time.sleep(0.2)
            before = set(self.pids)
            self.refreshPids()
            if set(self.pids) != before:
                stableSince = time.monotonic()
            elif time.monotonic() - stableSince >= 1.0:
                return

    def warmUp(self) -> None:
        """
        One message, so lazily loaded code is loaded before we measure.
        """
        body = b"Subject: warm-up\r\n\r\n" + b"x" * 78 + b"\r\n"
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
            smtp.sendmail("bench@example.org", ["sink@example.org"], body)

    def rss(self) -> int:
        return memory(self.pids, "VmRSS")

    def hwm(self) -> int:
        return memory(self.pids, "VmHWM")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        code = stopProcess(self.proc, grace=self.spec.stopGrace)
        self._log.close()
        shutil.copyfile(self.scratch / "server.log", self.logPath)
        return code

    def delivered(self) -> int | None:
        return self.spec.delivered(self.scratch)

    def recordCode(self, timeout: float = 10.0) -> None:
        """
        Ask the server where its esmtpkit code came from: with
        L{CODE_SIGNAL}, its bench/codecheck/sitecustomize writes the files
        of the modules it has loaded to C{<scratch>/code/<pid>.json}.
        """
        record = self.scratch / "code" / f"{self.proc.pid}.json"
        if not self.alive():
            return
        os.kill(self.proc.pid, CODE_SIGNAL)
        deadline = time.monotonic() + timeout
        while not record.exists() and self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def checkCode(self) -> dict[str, Any]:
        """
        After the server stopped: where the esmtpkit code it ran came from,
        as the server wrote on request (L{recordCode}). Every
        esmtpkit module, the twistd plugin, the module its service maker
        names (esmtpkit.tap) and the handler's module must come from
        C{spec.codeRoot}; else, or without a record from the process we
        started, L{ScenarioFailure}.
        """
        root = self.spec.codeRoot
        assert root is not None
        path = self.scratch / "code" / f"{self.proc.pid}.json"
        if not path.exists():
            raise ScenarioFailure(
                "code check: the server wrote no record of its modules"
            )
        record = json.loads(path.read_text())
        package, plugins = root / "esmtpkit", root / "twisted" / "plugins"
        wrong = []
        makers = [m for m in record["makers"] if m["tapname"] == "esmtpkit"]
        if not within(record["plugin"], plugins):
            wrong.append(f"twistd plugin from {record['plugin']}")
        if not makers or not all(within(m["file"], package) for m in makers):
            wrong.append(f"the plugin's service maker module: {makers or 'none'}")
        handler = record["handler"]
        if handler is not None and not within(handler["file"], package):
            wrong.append(f"handler {handler['name']} from {handler['file']}")
        for name, paths in record["modules"].items():
            where = plugins if name.startswith("twisted.") else package
            if not within(paths, where):
                wrong.append(f"{name} from {paths}")
        if wrong:
            raise ScenarioFailure(
                f"code check: not from {root}: " + "; ".join(wrong[:5])
            )

        def rel(paths: list[str] | None) -> str:
            return ", ".join(
                str(Path(p).resolve().relative_to(root.resolve())) for p in paths or []
            )

        return {
            "root": str(root),
            "pid": record["pid"],
            "plugin": rel(record["plugin"]),
            "tap": {m["module"]: rel(m["file"]) for m in makers},
            "handler": handler and {**handler, "file": rel(handler["file"])},
            "modules": {n: rel(p) for n, p in record["modules"].items()},
        }

    def problems(self) -> list[str]:
        """
        Lines of the server's output that report an error.
        """
        text = self.logPath.read_text(errors="replace")
        bad = re.compile(
            r"Traceback|Unhandled|Error|CRITICAL|\[error\]|\[critical\]", re.I
        )
        return [line.strip() for line in text.splitlines() if bad.search(line)][:20]

    def logTail(self) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            return (self.scratch / "server.log").read_text(errors="replace")[-3000:]
        return ""

    def cleanUp(self) -> None:
        # A scratch folder of many files (a Maildir of 10,000 messages) is
        # removed when the run ends, not now: on ext4 without a journal (as
        # on this benchmark's VMs) the allocator skips inodes freed in the
        # last minutes, one by one, so removing 10,000 files would make the
        # file creations of whichever server runs next slow -- the
        # harness's cost, not that server's.
        files = sum(len(names) for _, _, names in os.walk(self.scratch))
        if files > 1000:
            TEMPORARY.append(self.scratch)
        else:
            shutil.rmtree(self.scratch, ignore_errors=True)


# -- load ---------------------------------------------------------------------


class Client:
    """
    bench/loadclient.py in a subprocess: its JSON event lines are read by a
    thread, so waiting for one never blocks past its timeout.
    """

    def __init__(
        self, pin: Pinning, logs: Path, label: str, mode: str, **options: Any
    ) -> None:
        self.command = pin.client + [PYTHON, str(HERE / "loadclient.py"), mode]
        for key, value in options.items():
            self.command += [f"--{key.replace('_', '-')}", str(value)]
        self._err = open(logs / f"{label}.client.log", "wb")
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )
        LIVE[self.proc.pid] = self.proc
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                self._events.put(
                    {"event": "garbage", "line": line.decode(errors="replace")}
                )
        self._events.put({"event": "exit"})

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """
        The next event; an error if it is not C{event}.
        """
        try:
            got = self._events.get(timeout=timeout)
        except queue.Empty:
            raise ScenarioFailure(f"client: no {event!r} within {timeout} s") from None
        if got.get("event") != event:
            raise ScenarioFailure(f"client: expected {event!r}, got {got}")
        if got.get("error"):
            raise ScenarioFailure(f"client: {got['error']}")
        return got

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        result = self.expect("result", timeout)
        self.proc.wait(10)
        if self.proc.returncode != 0:
            raise ScenarioFailure(f"client exited {self.proc.returncode}")
        return result

    def close(self) -> None:
        stopProcess(self.proc, grace=2.0)
        self._err.close()


class ScenarioFailure(Exception):
    """
    The scenario did not deliver what it claims to measure.
    """


def smtpSource(
    pin: Pinning,
    port: int,
    sessions: int,
    messages: int,
    size: int,
    keepOpen: bool,
    timeout: float = 600.0,
) -> tuple[float, list[str]]:
    """
    Run smtp-source; (seconds, command). It exits non-zero at the first
    reply that is not the expected positive one.
    """
    command = (
        pin.client
        + [
            shutil.which("smtp-source") or "smtp-source",
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-M",
            "bench.example.org",
            "-f",
            "bench@example.org",
            "-t",
            "sink@example.org",
        ]
        + (["-d"] if keepOpen else [])
        + [f"127.0.0.1:{port}"]
    )
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    LIVE[proc.pid] = proc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stopProcess(proc)
        raise ScenarioFailure(f"smtp-source did not finish in {timeout} s") from None
    finally:
        LIVE.pop(proc.pid, None)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        said = (out + err).decode(errors="replace").strip()[-500:]
        raise ScenarioFailure(f"smtp-source exited {proc.returncode}: {said}")
    return elapsed, command


# -- scenarios ----------------------------------------------------------------


@dataclass
class Metric:
    key: str
    label: str
    better: str  # "higher" or "lower"
    digits: int = 0
    ratio: bool = True  # False where the reference can be ~0 (growth)


@dataclass
class Scenario:
    key: str
    title: str
    metrics: list[Metric]
    run: Callable[[Server, Profile, Context], dict[str, Any]]
    needsTLS: bool = False
    needsExtension: str | None = None  # EHLO keyword, else the server is n/a
    skip: Callable[[Profile], str | None] = lambda p: None  # why not run, if not
    headline: str = ""  # the metric compared in "esmtpkit vs esmtpkit-base"


@dataclass
class Context:
    pin: Pinning
    logs: Path
    label: str


PEAK = Metric("peak_rss_mib", "peak RSS MiB", "lower", 1)


def peakRss(server: Server, sampler: Sampler) -> float:
    """
    The servers' peak RSS in MiB: the kernel's high-water mark (VmHWM, since
    the server started) or the highest sample, whichever is higher.
    """
    return max(server.hwm(), sampler.peak) / MiB


def throughput(
    sessions: str, messages: str, size: int | str, keepOpen: bool, unit: str
) -> Callable[[Server, Profile, Context], dict[str, Any]]:
    """
    An smtp-source scenario: C{sessions}, C{messages} and C{size} name
    Profile fields (or give a size).
    """

    def run(server: Server, p: Profile, ctx: Context) -> dict[str, Any]:
        count = getattr(p, messages)
        length = getattr(p, size) if isinstance(size, str) else size
        with Sampler(server) as sampler:
            elapsed, command = smtpSource(
                ctx.pin, server.port, getattr(p, sessions), count, length, keepOpen
            )
        result = {
            "messages": count,
            "seconds": elapsed,
            PEAK.key: peakRss(server, sampler),
            "client_command": command,
        }
        if unit == "mib":
            result["mib_per_s"] = count * length / MiB / elapsed
        else:
            result[unit] = count / elapsed
        return result

    return run


def scenarioD(server: Server, p: Profile, ctx: Context) -> dict[str, Any]:
    client = Client(
        ctx.pin,
        ctx.logs,
        ctx.label,
        "stream",
        port=server.port,
        clients=p.d_clients,
        size=p.d_size,
        timeout=600,
    )
    try:
        ready = client.expect("ready", 60)
        time.sleep(0.3)
        baseline = server.rss()
        with Sampler(server) as sampler:
            client.send("go")
            result = client.result(600)
        peak = peakRss(server, sampler)
    finally:
        client.close()
    growth = max(0.0, peak - baseline / MiB)
    return {
        "messages": result["acked"],
        "expected_acks": p.d_clients,
        "seconds": result["elapsed"],
        "in_flight_mib": ready["inFlight"] / MiB,
        "baseline_rss_mib": baseline / MiB,
        PEAK.key: peak,
        "growth_mib": growth,
        "growth_per_byte": growth / (ready["inFlight"] / MiB),
        "mib_per_s": result["bytes"] / MiB / result["elapsed"],
        "client_command": client.command,
    }


def scenarioE(server: Server, p: Profile, ctx: Context) -> dict[str, Any]:
    return idleConnections(server, p, ctx, p.e_connections)


def scenarioE2(server: Server, p: Profile, ctx: Context) -> dict[str, Any]:
    return idleConnections(server, p, ctx, p.e2_connections)


def skipE2(p: Profile) -> str | None:
    if not p.e2_connections:
        return "full run only"
    limit = min(resource.getrlimit(resource.RLIMIT_NOFILE))
    if limit < p.e2_connections + 100:
        return f"file-descriptor limit {limit}"
    return None


def idleConnections(
    server: Server, p: Profile, ctx: Context, connections: int
) -> dict[str, Any]:
    """
    Open C{connections} connections that say EHLO and then nothing; measure
    the server's RSS growth, and the latency of probe transactions meanwhile.
    """
    time.sleep(0.3)
    before = server.rss()
    client = Client(
        ctx.pin,
        ctx.logs,
        ctx.label,
        "idle",
        port=server.port,
        connections=connections,
        probes=p.e_probes,
        timeout=300,
    )
    try:
        opened = client.expect("idle-open", 240)
        time.sleep(0.3)  # let the server settle
        after = statistics.median(server.rss() for _ in range(3))
        client.send("probe")
        probes = client.expect("probes", 60)
        client.send("close")
        result = client.result(60)
    finally:
        client.close()
    if probes["dropped"]:
        raise ScenarioFailure(f"{probes['dropped']} idle connections were dropped")
    latencies = [1000 * s for s in probes["latencies"]]
    return {
        "messages": result["acked"],
        "expected_acks": p.e_probes,
        "connections": opened["connections"],
        "open_seconds": opened["seconds"],
        "rss_before_mib": before / MiB,
        "rss_after_mib": after / MiB,
        "kib_per_idle_conn": (after - before) / 1024 / opened["connections"],
        "probe_ms_median": statistics.median(latencies),
        "probe_ms_max": max(latencies),
        PEAK.key: server.hwm() / MiB,
        "client_command": client.command,
    }


def pipelined(mode: str) -> Callable[[Server, Profile, Context], dict[str, Any]]:
    """
    F (C{mode} "pipeline") and F2 (C{mode} "bdat"): bench/loadclient.py
    sends pipelined transactions and checks every reply.
    """

    def run(server: Server, p: Profile, ctx: Context) -> dict[str, Any]:
        options: dict[str, Any] = {
            "port": server.port,
            "sessions": p.f_sessions,
            "messages": p.f_messages,
            "size": 1024,
            "timeout": 600,
        }
        if mode == "bdat":
            options["batch"] = p.f_batch
        client = Client(ctx.pin, ctx.logs, ctx.label, mode, **options)
        try:
            with Sampler(server) as sampler:
                result = client.result(600)
        finally:
            client.close()
        record = {
            "messages": result["acked"],
            "expected_acks": p.f_messages,
            "seconds": result["elapsed"],
            "msg_per_s": result["acked"] / result["elapsed"],
            "pipelining_advertised": result["pipelining"],
            PEAK.key: peakRss(server, sampler),
            "client_command": client.command,
        }
        if "writes" in result:
            record["client_writes"] = result["writes"]
        return record

    return run


def scenarioG(server: Server, p: Profile, ctx: Context) -> dict[str, Any]:
    client = Client(
        ctx.pin,
        ctx.logs,
        ctx.label,
        "tls",
        port=server.port,
        sessions=p.g_sessions,
        messages=p.g_messages,
        size=1024,
        timeout=600,
    )
    try:
        result = client.result(600)
    finally:
        client.close()
    return {
        "messages": result["acked"],
        "expected_acks": p.g_messages,
        "seconds": result["elapsed"],
        "msg_per_s": result["acked"] / result["elapsed"],
        "client_command": client.command,
    }


def scenarioH(server: Server, p: Profile, ctx: Context) -> dict[str, Any]:
    time.sleep(0.2)
    baseline = server.rss()
    client = Client(
        ctx.pin,
        ctx.logs,
        ctx.label,
        "slowreader",
        port=server.port,
        commands=p.h_commands,
        pause=p.h_pause,
        read_rate=p.h_read_rate,
        timeout=600,
    )
    try:
        with Sampler(server) as sampler:
            stalled = client.expect("stalled", 60)
            stalledPeak = max(sampler.peak, server.rss())
            client.send("read")
            result = client.result(600)
        peak = peakRss(server, sampler)
    finally:
        client.close()
    return {
        "messages": 0,
        "commands": result["commands"],
        "replies": result["acked"],
        "commands_sent_while_stalled": stalled["commandsWritten"],
        "baseline_rss_mib": baseline / MiB,
        "growth_stalled_mib": max(0.0, stalledPeak - baseline) / MiB,
        "growth_mib": max(0.0, peak - baseline / MiB),
        PEAK.key: peak,
        "seconds": result["elapsed"],
        "client_command": client.command,
    }


SCENARIOS = [
    Scenario(
        "A",
        "50 concurrent sessions, 1 KiB messages, kept-open connections",
        [Metric("msg_per_s", "msg/s", "higher"), PEAK],
        throughput("a_sessions", "a_messages", 1024, True, "msg_per_s"),
        headline="msg_per_s",
    ),
    Scenario(
        "B",
        "one 1 KiB message per connection",
        [Metric("conn_per_s", "conn/s", "higher"), PEAK],
        throughput("b_sessions", "b_messages", 1024, False, "conn_per_s"),
        headline="conn_per_s",
    ),
    Scenario(
        "C",
        "10 MiB messages, 4 sessions",
        [Metric("mib_per_s", "MiB/s", "higher", 1), PEAK],
        throughput("c_sessions", "c_messages", "c_size", True, "mib"),
        headline="mib_per_s",
    ),
    Scenario(
        "D",
        "clients streaming one big message each, at once",
        [
            PEAK,
            Metric("growth_mib", "RSS growth MiB", "lower", 1, ratio=False),
            Metric("growth_per_byte", "growth B/B in flight", "lower", 3, ratio=False),
            Metric("mib_per_s", "MiB/s", "higher", 1),
        ],
        scenarioD,
        headline="mib_per_s",
    ),
    Scenario(
        "E",
        "idle connections held open, 5 probe transactions meanwhile",
        [
            Metric("kib_per_idle_conn", "KiB/idle conn", "lower", 2),
            Metric("probe_ms_median", "probe ms (median)", "lower", 1),
            Metric("probe_ms_max", "probe ms (max)", "lower", 1, ratio=False),
        ],
        scenarioE,
        headline="kib_per_idle_conn",
    ),
    Scenario(
        "E2",
        "many idle connections held open, 5 probe transactions meanwhile",
        [
            Metric("connections", "connections held", "higher", 0, ratio=False),
            Metric("kib_per_idle_conn", "KiB/idle conn", "lower", 2),
            Metric("probe_ms_max", "probe ms (max)", "lower", 1, ratio=False),
        ],
        scenarioE2,
        skip=skipE2,
        headline="kib_per_idle_conn",
    ),
    Scenario(
        "F",
        "pipelined by RFC 2920, 10 sessions: each write = one message's "
        "content and final dot + the next MAIL, RCPT, DATA (then wait for "
        "the 354)",
        [Metric("msg_per_s", "msg/s", "higher"), PEAK],
        pipelined("pipeline"),
        headline="msg_per_s",
    ),
    Scenario(
        "F2",
        "pipelined with CHUNKING, 10 sessions: 10 whole transactions per write "
        "(MAIL, RCPT, BDAT n LAST + n bytes, repeated), servers advertising "
        "CHUNKING only",
        [Metric("msg_per_s", "msg/s", "higher"), PEAK],
        pipelined("bdat"),
        needsExtension="chunking",
        headline="msg_per_s",
    ),
    Scenario(
        "G",
        "1 KiB messages over STARTTLS, 10 sessions",
        [Metric("msg_per_s", "msg/s", "higher")],
        scenarioG,
        needsTLS=True,
        needsExtension="starttls",
        headline="msg_per_s",
    ),
    Scenario(
        "H",
        "slow reader: a pipelined RSET flood whose replies are left unread a "
        "while, then read at a steady rate",
        [
            Metric(
                "growth_stalled_mib",
                "RSS growth MiB while stalled",
                "lower",
                1,
                ratio=False,
            ),
            Metric("growth_mib", "RSS growth MiB, whole run", "lower", 1, ratio=False),
            Metric("seconds", "seconds", "lower", 2),
        ],
        scenarioH,
        headline="seconds",
    ),
]


def describe(s: Scenario, p: Profile) -> str:
    """
    The scenario's title with the load this profile gives it.
    """
    load = {
        "A": f"{p.a_messages} msgs, smtp-source -s {p.a_sessions} -d -l 1024",
        "B": f"{p.b_messages} msgs, smtp-source -s {p.b_sessions} -l 1024",
        "C": f"{p.c_messages} msgs of {p.c_size // MiB} MiB, "
        f"smtp-source -s {p.c_sessions} -d",
        "D": f"{p.d_clients} × {p.d_size // MiB} MiB = "
        f"{p.d_clients * p.d_size // MiB} MiB in flight",
        "E": f"{p.e_connections} idle connections after EHLO, {p.e_probes} probes",
        "E2": f"{p.e2_connections} idle connections after EHLO, {p.e_probes} probes",
        "F": f"{p.f_messages} msgs, 1 KiB",
        "F2": f"{p.f_messages} msgs, 1 KiB, {p.f_batch} per write",
        "G": f"{p.g_messages} msgs",
        "H": f"{p.h_commands:,} RSETs, replies unread for {p.h_pause:g} s, "
        f"then read at {p.h_read_rate:,}/s",
    }[s.key]
    return f"{s.key}. {s.title} ({load})"


# -- one measurement ------------------------------------------------------------


def measure(
    spec: ServerSpec,
    scenario: Scenario,
    p: Profile,
    ctx: Context,
    tls: tuple[str, str] | None,
) -> dict[str, Any]:
    """
    Start the server, warm it up, run the scenario, stop it, and check that
    what the client was told had been delivered was.
    """
    why = scenario.skip(p)
    if why is not None:
        return {"na": f"n/a ({why})"}
    if scenario.needsTLS and (spec.tlsArgs is None or tls is None):
        why = "no TLS in this peer" if spec.tlsArgs is None else "no certificate"
        return {"na": f"n/a ({why})"}
    largest = max(p.c_size, p.d_size)
    extra = list(spec.scenarioArgs.get(scenario.key, []))
    if scenario.needsTLS and spec.tlsArgs and tls:
        extra += spec.tlsArgs(*tls)
    try:
        server = Server(spec, ctx.pin, ctx.logs, ctx.label, largest, extra)
    except RuntimeError as e:
        return {"failure": f"server did not start: {e}"}
    record: dict[str, Any] = {
        "server_command": server.command,
        "server_env": server.env,
        "scenario_args": extra,
        "port": server.port,
        "server_pid": server.proc.pid,
        "measured_pids": server.pids,
        "listener_pids": server.listenerPids,
    }
    try:
        try:
            wanted = scenario.needsExtension
            if wanted and wanted not in server.features:
                record["na"] = f"n/a (no {wanted.upper()} in its EHLO reply)"
                return record
            server.warmUp()
            record.update(scenario.run(server, p, ctx))
            if not server.alive():
                raise ScenarioFailure(f"server died (exit {server.proc.returncode})")
        except (ScenarioFailure, OSError, smtplib.SMTPException) as e:
            record["failure"] = (
                str(e) if isinstance(e, ScenarioFailure) else f"{type(e).__name__}: {e}"
            )
        finally:
            if spec.codeRoot is not None:
                server.recordCode()  # after the load, outside its measurement
            record["exit_code"] = server.stop()
            record["server_problems"] = server.problems()
            if spec.codeRoot is not None:
                try:
                    record["code"] = server.checkCode()
                except ScenarioFailure as e:
                    earlier = record.get("failure")
                    record["failure"] = f"{earlier}; {e}" if earlier else str(e)
        if "failure" in record:
            return record
        if (
            record.get("expected_acks") is not None
            and record["messages"] != record["expected_acks"]
        ):
            record["failure"] = (
                f"client acknowledged {record['messages']} of "
                f"{record['expected_acks']} messages"
            )
        counted = server.delivered()
        record["server_count"] = counted
        expected = record["messages"] + 1  # the warm-up message
        if counted is not None and counted != expected:
            record["failure"] = (
                f"server counted {counted} messages, expected "
                f"{expected} (scenario + 1 warm-up)"
            )
        return record
    finally:
        server.cleanUp()


# -- summary ---------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(scenario: Scenario, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Per server and metric: median and range over rounds, and the median and
    range of the per-round ratio to esmtpkit.
    """
    byServer: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        byServer.setdefault(run["server"], []).append(run)
    summary: dict[str, Any] = {}
    for name, mine in byServer.items():
        entry: dict[str, Any] = {}
        good = [r for r in mine if "failure" not in r and "na" not in r]
        if not good:
            entry["status"] = next(
                (r.get("na") or "FAILED: " + r["failure"] for r in mine), "no runs"
            )
            summary[name] = entry
            continue
        if len(good) < len(mine):
            entry["failures"] = [r["failure"] for r in mine if "failure" in r]
        for metric in scenario.metrics:
            values = [r[metric.key] for r in good if metric.key in r]
            if not values:
                continue
            entry[metric.key] = spread(values)
            ratios = []
            for r in good:
                ref = next(
                    (
                        x
                        for x in runs
                        if x["server"] == REFERENCE
                        and x["round"] == r["round"]
                        and metric.key in x
                        and "failure" not in x
                    ),
                    None,
                )
                if ref is not None and ref[metric.key]:
                    ratios.append(r[metric.key] / ref[metric.key])
            if ratios:
                entry[metric.key + "_ratio"] = spread(ratios)
        summary[name] = entry
    return summary


def fmt(value: float, digits: int) -> str:
    if abs(value) >= 100 and digits <= 1:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def table(
    scenario: Scenario, p: Profile, summary: dict[str, Any], order: list[str]
) -> str:
    heads = ["server"]
    for m in scenario.metrics:
        arrow = "↑" if m.better == "higher" else "↓"
        heads += [f"{m.label} {arrow}"] + (["÷ esmtpkit"] if m.ratio else [])
    rows = [
        "### " + describe(scenario, p),
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "---|" * len(heads),
    ]
    for name in order:
        if name not in summary:
            continue
        entry = summary[name]
        if "status" in entry:
            rows.append(f"| {name} | {entry['status']} |" + " |" * (len(heads) - 2))
            continue
        cells = [name + (" ⚠" if entry.get("failures") else "")]
        for m in scenario.metrics:
            s = entry.get(m.key)
            if s is None:
                cells += ["–", "–"] if m.ratio else ["–"]
                continue
            cell = fmt(s["median"], m.digits)
            if s["n"] > 1:
                cell += f" ({fmt(s['min'], m.digits)}–{fmt(s['max'], m.digits)})"
            cells.append(cell)
            if m.ratio:
                r = entry.get(m.key + "_ratio")
                cells.append(f"{r['median']:.2f}" if r else "–")
        rows.append("| " + " | ".join(cells) + " |")
    failures = [
        f"{name}: {f}"
        for name in order
        if name in summary
        for f in summary[name].get("failures", [])
    ]
    if failures:
        rows += ["", "⚠ runs left out of the medians:"] + [f"- {f}" for f in failures]
    return "\n".join(rows)


def roundRatios(
    runs: list[dict[str, Any]], metric: str, server: str, other: str
) -> list[float]:
    """
    C{server}'s C{metric} over C{other}'s, for each round where both have a
    good run.
    """
    out = []
    for r in runs:
        if r["server"] != server or metric not in r or "failure" in r:
            continue
        o = next(
            (
                x
                for x in runs
                if x["server"] == other
                and x["round"] == r["round"]
                and metric in x
                and "failure" not in x
            ),
            None,
        )
        if o and o[metric]:
            out.append(r[metric] / o[metric])
    return out


DURABLE_METRICS = {"A": "msg_per_s", "B": "conn_per_s"}  # esmtpkit-maildir ÷ postfix
DURABLE_GOAL = 2.0


def durableRatio(runs: list[dict[str, Any]], key: str) -> str | None:
    """
    The line under A's and B's tables: esmtpkit-maildir ÷ postfix, per
    round, median (min–max); None unless both ran.
    """
    ratios = roundRatios(runs, DURABLE_METRICS[key], DURABLE, DURABLE_PEER)
    if not ratios:
        return None
    s = spread(ratios)
    where = f" ({s['min']:.2f}–{s['max']:.2f})" if s["n"] > 1 else ""
    return (
        f"{DURABLE} ÷ {DURABLE_PEER}: {s['median']:.2f}×{where}, per round "
        f"(target ≥ {DURABLE_GOAL:g}×): both acknowledge after an fsync"
    )


def targets(results: dict[str, Any], p: Profile) -> list[dict[str, Any]]:
    """
    The issue's targets, each from per-round ratios of the same run.
    """
    checks = []

    def perRound(key: str, metric: str, other: str) -> list[float]:
        return roundRatios(
            results.get(key, {}).get("runs", []), metric, REFERENCE, other
        )

    for key, metric in (("A", "msg_per_s"), ("B", "conn_per_s"), ("F", "msg_per_s")):
        for other, goal in (("twisted.mail", 1.3), ("aiosmtpd", 4.0)):
            ratios = perRound(key, metric, other)
            if ratios:
                value = statistics.median(ratios)
                checks.append(
                    {
                        "target": f"{key}: esmtpkit ≥ {goal}× {other}",
                        "measured": f"{value:.2f}×",
                        "met": value >= goal,
                    }
                )
    for key, metric in DURABLE_METRICS.items():
        ratios = roundRatios(
            results.get(key, {}).get("runs", []), metric, DURABLE, DURABLE_PEER
        )
        if ratios:
            value = statistics.median(ratios)
            checks.append(
                {
                    "target": f"{key}: {DURABLE} ≥ {DURABLE_GOAL}× {DURABLE_PEER}"
                    " (durable acceptance, issue 12)",
                    "measured": f"{value:.2f}×",
                    "met": value >= DURABLE_GOAL,
                }
            )
    ratios = perRound("C", "mib_per_s", "twisted.mail")
    if ratios:
        value = statistics.median(ratios)
        checks.append(
            {
                "target": "C: esmtpkit ≥ 2× twisted.mail body throughput",
                "measured": f"{value:.2f}×",
                "met": value >= 2,
            }
        )
    entry = results.get("D", {}).get("summary", {}).get(REFERENCE, {})
    if PEAK.key in entry:
        value = entry[PEAK.key]["median"]
        inFlight = p.d_clients * p.d_size // MiB
        note = (
            "" if inFlight >= 400 else f" (only {inFlight} MiB in flight in this run)"
        )
        checks.append(
            {
                "target": "D: esmtpkit peak RSS ≤ 64 MiB with 400 MiB in flight",
                "measured": f"{value:.1f} MiB{note}",
                "met": value <= 64,
            }
        )
    entry = results.get("E", {}).get("summary", {}).get(REFERENCE, {})
    if "kib_per_idle_conn" in entry:
        value = entry["kib_per_idle_conn"]["median"]
        checks.append(
            {
                "target": "E: esmtpkit ≤ 2 KiB RSS per idle connection",
                "measured": f"{value:.2f} KiB",
                "met": value <= 2,
            }
        )
    entry = results.get("E2", {}).get("summary", {}).get(REFERENCE, {})
    if "connections" in entry:
        value = entry["connections"]["median"]
        checks.append(
            {
                "target": f"E: esmtpkit holds {p.e2_connections:,} idle connections",
                "measured": f"{value:,.0f} held, "
                f"{entry['kib_per_idle_conn']['median']:.2f} KiB each",
                "met": value >= p.e2_connections,
            }
        )
    return checks


PEER = "twisted.mail"  # esmtpkit and esmtpkit-base are compared by their ratios to it
NO_LOSS = {"A": 0.03, "B": 0.03, "C": 0.03, "F": 0.03}  # largest loss allowed
IDLE_KIB = 2.0  # E: most RSS per idle connection


def codeSummary(
    results: dict[str, Any], name: str, baseline: Baseline | None
) -> dict[str, Any]:
    """
    What the code checks of C{name}'s runs found: how many passed, failed;
    the plugin, tap, handler and esmtpkit modules its servers had loaded;
    and which of those files differ between the baseline and the checkout.
    """
    runs = [r for s in results.values() for r in s["runs"] if r["server"] == name]
    checked = [r["code"] for r in runs if "code" in r]
    failed = [r["failure"] for r in runs if "code check" in r.get("failure", "")]
    files = sorted({f for c in checked for f in c["modules"].values()})
    return {
        "runs": len([r for r in runs if "server_command" in r]),
        "passed": len(checked),
        "failed": failed,
        "root": checked[0]["root"] if checked else None,
        "plugin": sorted({c["plugin"] for c in checked}),
        "tap": sorted({f"{m} from {f}" for c in checked for m, f in c["tap"].items()}),
        "handler": sorted(
            {
                f"{c['handler']['name']} from {c['handler']['file']}"
                for c in checked
                if c["handler"]
            }
        ),
        "files": files,
        "differ": [f for f in files if baseline and f in baseline.changed],
    }


def comparison(
    results: dict[str, Any], chosen: list[Scenario], baseline: Baseline
) -> tuple[list[str], dict[str, Any]]:
    """
    The "esmtpkit vs esmtpkit-base" section: per scenario, each one's
    per-round ratio to twisted.mail (median) and the change between them,
    with the no-loss checks; and what the code checks found.
    """
    rows = []
    for scenario in chosen:
        metric = next(m for m in scenario.metrics if m.key == scenario.headline)
        runs = results[scenario.key]["runs"]
        summary = results[scenario.key].get("summary", {})
        mine, base = (
            summary.get(n, {}).get(metric.key, {}).get("median")
            for n in (REFERENCE, BASE)
        )
        if mine is None and base is None:
            continue
        vsPeer = [
            statistics.median(r) if r else None
            for r in (
                roundRatios(runs, metric.key, REFERENCE, PEER),
                roundRatios(runs, metric.key, BASE, PEER),
            )
        ]
        direct = roundRatios(runs, metric.key, REFERENCE, BASE)
        change, basis = None, None
        if vsPeer[0] and vsPeer[1]:
            change, basis = vsPeer[0] / vsPeer[1] - 1, f"ratio to {PEER}"
        elif mine is not None and base:
            change, basis = mine / base - 1, "direct"
        met = None
        if scenario.key in NO_LOSS and change is not None:
            met = change >= -NO_LOSS[scenario.key]
        elif scenario.key == "E" and mine is not None:
            met = mine <= IDLE_KIB
        rows.append(
            {
                "scenario": scenario.key,
                "metric": metric.key,
                "better": metric.better,
                REFERENCE: mine,
                BASE: base,
                f"{REFERENCE}_per_{PEER}": vsPeer[0],
                f"{BASE}_per_{PEER}": vsPeer[1],
                "change": change,
                "change_of": basis,
                f"{REFERENCE}_per_{BASE}": spread(direct) if direct else None,
                "met": met,
            }
        )
    code = {n: codeSummary(results, n, baseline) for n in (REFERENCE, BASE)}
    b = code[BASE]

    def num(value: float | None, digits: int) -> str:
        return "–" if value is None else fmt(value, digits)

    lines = [
        f"### {REFERENCE} vs {BASE}",
        "",
        f"{BASE}: `{baseline.rev}` = {baseline.commit[:10]} “{baseline.subject}”, "
        f"from `git archive` into {baseline.tree} (removed after the run), first "
        "on the server's PYTHONPATH; otherwise the same command, options and "
        f"pinning as {REFERENCE}.",
        "",
        "Code check: after each run's load, the server itself wrote (on the "
        "signal bench/codecheck's sitecustomize waits for) which files its "
        "esmtpkit modules, twistd plugin, esmtpkit.tap and handler came from:",
        "",
    ]
    for name in (BASE, REFERENCE):
        c = code[name]
        verdict = (
            f"{c['passed']} of {c['runs']} runs checked: all from {c['root']}"
            if c["passed"]
            else f"0 of {c['runs']} runs checked"
        )
        lines.append(
            f"- {name}: {verdict}; plugin {', '.join(c['plugin']) or '–'}; "
            f"{'; '.join(c['tap']) or '–'}; handler {'; '.join(c['handler']) or '–'}; "
            f"{len(c['files'])} esmtpkit files"
            + (f"; WRONG CODE: {'; '.join(c['failed'][:3])}" if c["failed"] else "")
        )
    differ = ", ".join(b["differ"][:12]) or "none (the same code)"
    if len(b["differ"]) > 12:
        differ += f" and {len(b['differ']) - 12} more"
    lines.append(
        f"- of the files {BASE} loaded, {len(b['differ'])} differ from the "
        f"checkout's (or are not there): {differ}"
    )
    lines += [
        "",
        f"Medians over rounds of per-round ratios to {PEER}; change = "
        f"{REFERENCE}'s ratio ÷ {BASE}'s − 1 (of the values themselves where "
        f"{PEER} has none); {REFERENCE} ÷ base: per round, median (min–max), "
        "a measure of the noise; check: A, B, C, F lose at most 3 %, E at most "
        f"{IDLE_KIB:g} KiB per idle connection.",
        "",
        f"| | metric | {REFERENCE} | {BASE} | ÷ {PEER}: {REFERENCE} vs base "
        f"| change | {REFERENCE} ÷ base | check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        metric = next(
            m
            for s in chosen
            if s.key == row["scenario"]
            for m in s.metrics
            if m.key == row["metric"]
        )
        arrow = "↑" if metric.better == "higher" else "↓"
        mineR, baseR = row[f"{REFERENCE}_per_{PEER}"], row[f"{BASE}_per_{PEER}"]
        ratios = (
            f"{mineR:.2f}× vs {baseR:.2f}×"
            if mineR is not None and baseR is not None
            else "–"
        )
        change = row["change"]
        changeText = (
            "–" if change is None else f"{100 * change:+.1f} %".replace("-", "−")
        )
        if row["change_of"] == "direct":
            changeText += " (direct)"
        direct = row[f"{REFERENCE}_per_{BASE}"]
        directText = "–"
        if direct is not None:
            directText = f"{direct['median']:.3f}"
            if direct["n"] > 1:
                directText += f" ({direct['min']:.3f}–{direct['max']:.3f})"
        check = {None: "", True: "ok", False: "**NO**"}[row["met"]]
        if row["scenario"] == "E" and row["met"] is not None:
            check += f" (≤ {IDLE_KIB:g} KiB)"
        lines.append(
            f"| {row['scenario']} | {metric.label} {arrow} "
            f"| {num(row[REFERENCE], metric.digits)} | {num(row[BASE], metric.digits)} "
            f"| {ratios} | {changeText} "
            f"| {directText} | {check} |"
        )
    return lines, {"rows": rows, "code": code}


def chart(results: dict[str, Any], order: list[str], path: Path) -> None:
    """
    msg/s (A, F) and peak RSS (A, D) per server, medians with min–max bars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            "Throughput (msg/s, higher is better)",
            [("A", "msg_per_s"), ("F", "msg_per_s")],
        ),
        ("Peak server RSS (MiB, lower is better)", [("A", PEAK.key), ("D", PEAK.key)]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, (title, series) in zip(axes, panels, strict=True):
        names = [
            n
            for n in order
            if any(
                n in results.get(k, {}).get("summary", {})
                and m in results[k]["summary"][n]
                for k, m in series
            )
        ]
        width = 0.8 / len(series)
        for i, (key, metric) in enumerate(series):
            summary = results.get(key, {}).get("summary", {})
            xs, ys, lo, hi = [], [], [], []
            for j, name in enumerate(names):
                s = summary.get(name, {}).get(metric)
                if s:
                    xs.append(j + (i - (len(series) - 1) / 2) * width)
                    ys.append(s["median"])
                    lo.append(s["median"] - s["min"])
                    hi.append(s["max"] - s["median"])
            bars = ax.bar(
                xs, ys, width, yerr=[lo, hi], capsize=3, label=f"scenario {key}"
            )
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("esmtpkit benchmark (medians, min–max over rounds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# -- the run --------------------------------------------------------------------


def selfSignedCertificate(folder: Path) -> tuple[str, str] | None:
    cert, key = folder / "tls-cert.pem", folder / "tls-key.pem"
    if not shutil.which("openssl"):
        return None
    proc = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
    )
    return (str(cert), str(key)) if proc.returncode == 0 else None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("esmtpkit", "Twisted", "aiosmtpd"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    git = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    found["esmtpkit_git"] = git.stdout.strip()
    dpkg = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "postfix"],
        capture_output=True,
        text=True,
    )
    found["postfix"] = dpkg.stdout.strip() or "unknown"
    return found


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1
        ),
        "loadavg_at_start": os.getloadavg(),
    }


def commands(
    results: dict[str, Any], order: list[str], baseline: Baseline | None = None
) -> list[str]:
    """
    The exact command lines used: each server's (from its first run) and
    each scenario's load (from its first run against esmtpkit), with the
    environment variables set for the server.
    """

    def show(command: list[str], port: int) -> str:
        text = " ".join(command).replace(str(BIN) + "/", "bench/.venv/bin/")
        if baseline is not None:
            text = text.replace(str(baseline.tree), "BASE_TREE")
        text = text.replace(str(HERE) + "/", "bench/")
        text = re.sub(r"/tmp/esmtpkit-bench-\w+", "SCRATCH", text)
        return re.sub(rf"\b{port}\b", "PORT", text)

    def withEnv(run: dict[str, Any]) -> list[str]:
        env = [f"{k}={v}" for k, v in run.get("server_env", {}).items()]
        return env + run["server_command"]

    runs = [r for s in results.values() for r in s["runs"] if "port" in r]
    lines = []
    if baseline is not None:
        lines.append(
            f"# BASE_TREE: git archive of {baseline.commit[:10]} "
            f"(--baseline {baseline.rev}), removed after the run"
        )
    for name in order:
        mine = [r for r in runs if r["server"] == name]
        plain = next((r for r in mine if not r["scenario_args"]), None)
        if plain:
            lines.append(f"# {name}: " + show(withEnv(plain), plain["port"]))
        for key, scenario in results.items():
            run = next(
                (
                    r
                    for r in scenario["runs"]
                    if r["server"] == name and "port" in r and r["scenario_args"]
                ),
                None,
            )
            if run is None:
                continue
            if plain is None:  # no run without extras: the whole command
                lines.append(
                    f"# {name}, scenario {key}: " + show(withEnv(run), run["port"])
                )
            else:
                extra = show(run["scenario_args"], run["port"])
                lines.append(f"# {name}, scenario {key} only, adds: {extra}")
    for key, scenario in results.items():
        withLoad = [r for r in scenario["runs"] if "client_command" in r]
        run = next(
            (r for r in withLoad if r["server"] == REFERENCE),
            withLoad[0] if withLoad else None,
        )
        if run:
            lines.append(f"# {key}: " + show(run["client_command"], run["port"]))
    return lines


def trapSignals() -> None:
    """
    SIGTERM, SIGHUP and SIGINT raise KeyboardInterrupt, so that every
    server is stopped and every temporary tree removed on the way out.
    """

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    # Also when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def stopEverythingOnExit() -> Iterator[None]:
    trapSignals()
    try:
        yield
    finally:
        stopAll()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller loads and 2 rounds, no E2 (about a minute)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per scenario")
    parser.add_argument(
        "--scenarios",
        default="".join(s.key for s in SCENARIOS),
        help="scenario keys to run, run together, e.g. AF2H; M (the milter "
        "scenario, bench/milterbench.py) only when asked [default: %(default)s]",
    )
    parser.add_argument("--servers", help="comma-separated server names [default: all]")
    parser.add_argument("--chart", type=Path, help="write the chart PNG here")
    parser.add_argument(
        "--json",
        type=Path,
        help="results file [default: bench/results/<timestamp>.json]",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument(
        "--d-size",
        type=int,
        metavar="MiB",
        help="D: size of each streamed message [default: 20, --quick: 4]",
    )
    parser.add_argument(
        "--d-clients", type=int, help="D: clients streaming at once [default: 20]"
    )
    parser.add_argument(
        "--h-commands",
        type=int,
        help="H: RSET commands in the flood [default: 3,000,000, --quick: 200,000]",
    )
    parser.add_argument(
        "--h-read-rate",
        type=int,
        help="H: replies read per second after the pause [default: 200,000]",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help=f"also run {BASE}: esmtpkit at git revision REV (a copy of its "
        "tree, removed after the run), with the same command, and compare",
    )
    args = parser.parse_args()
    trapSignals()

    profile = QUICK if args.quick else FULL
    if args.h_commands:
        profile.h_commands = args.h_commands
    if args.h_read_rate:
        profile.h_read_rate = args.h_read_rate
    if args.d_size:
        profile.d_size = args.d_size * MiB
    if args.d_clients:
        profile.d_clients = args.d_clients
    if args.rounds:
        profile.rounds = args.rounds
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    resultsDir = HERE / "results"
    logs = resultsDir / f"{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    jsonPath = args.json or resultsDir / f"{stamp}.json"

    # E holds thousands of connections: raise our (inherited) descriptor limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < profile.e_connections + 200:
        profile.e_connections = max(100, hard - 200)
        print(
            f"bench: file-descriptor limit {hard}: E holds only "
            f"{profile.e_connections} connections",
            file=sys.stderr,
        )

    pin = pinning(not args.no_pin)
    baseline = None
    if args.baseline:
        baseline = makeBaseline(args.baseline)
        found = ", ".join(
            f"{module} at {', '.join(files)}"
            for module, files in baseline.probe["makers"].items()
        )
        print(
            f"bench: {BASE} runs {baseline.commit[:10]} ({args.baseline}) "
            f"from {baseline.tree}: the probe found the plugin "
            f"{baseline.probe['plugin'][0]}, its module {found}, "
            f"handler {baseline.handler}",
            file=sys.stderr,
        )
    specs = servers(args.servers.split(",") if args.servers else None, baseline)
    order = [s.name for s in specs]
    keys = re.findall(r"[A-Z]\d*", args.scenarios.upper())
    milter = "M" in keys  # scenario M: bench/milterbench.py, run after the others
    keys = [k for k in keys if k != "M"]
    if milter and not keys:
        runMilter(args.quick, logs, pin, jsonPath, stamp)
        return
    unknownKeys = set(keys) - {s.key for s in SCENARIOS}
    if unknownKeys or not keys:
        sys.exit(f"unknown scenario(s): {', '.join(sorted(unknownKeys)) or '-'}")
    chosen = [s for s in SCENARIOS if s.key in keys]
    tls = selfSignedCertificate(logs) if any(s.needsTLS for s in chosen) else None
    started = time.monotonic()
    results: dict[str, Any] = {
        s.key: {"title": describe(s, profile), "runs": []} for s in chosen
    }
    report: dict[str, Any] = {
        "started": stamp,
        "argv": sys.argv[1:],
        "profile": asdict(profile),
        "machine": machine(),
        "versions": versions(),
        "pinning": pin.note,
        "baseline": (
            {**asdict(baseline), "tree": str(baseline.tree)} if baseline else None
        ),
        "reference": REFERENCE,
        "scenarios": results,
        "logs": str(logs),
    }
    if baseline is not None:
        report["versions"]["esmtpkit_base_git"] = (
            f"{baseline.commit[:10]} (--baseline {baseline.rev})"
        )
    print(
        f"bench: {len(specs)} servers × {len(chosen)} scenarios × "
        f"{profile.rounds} rounds; {pin.note}; logs in {logs}",
        file=sys.stderr,
    )

    with stopEverythingOnExit():
        for round in range(profile.rounds):
            rotation = specs[round % len(specs) :] + specs[: round % len(specs)]
            for scenario in chosen:
                for spec in rotation:
                    if scenario.key not in spec.scenarios:
                        continue
                    label = f"r{round}-{scenario.key}-{spec.name}"
                    began = time.monotonic()
                    ctx = Context(pin, logs, label)
                    record = measure(spec, scenario, profile, ctx, tls)
                    record.update(
                        server=spec.name,
                        round=round,
                        wall_seconds=time.monotonic() - began,
                    )
                    results[scenario.key]["runs"].append(record)
                    status = record.get("na") or (
                        "FAILED: " + record["failure"]
                        if "failure" in record
                        else ", ".join(
                            f"{m.label} {fmt(record[m.key], m.digits)}"
                            for m in scenario.metrics
                            if m.key in record
                        )
                    )
                    print(
                        f"  round {round + 1} {scenario.key} {spec.name:16} {status}",
                        file=sys.stderr,
                    )

    report["machine"]["loadavg_at_end"] = os.getloadavg()
    loads = report["machine"]["loadavg_at_start"], report["machine"]["loadavg_at_end"]
    lines = [
        f"## esmtpkit benchmark {stamp}",
        "",
        f"{report['machine']['cores']} cores ({report['machine']['cpu']}), "
        f"load average {loads[0][0]:.2f} at start, {loads[1][0]:.2f} at end; "
        f"{pin.note}; {profile.rounds} rounds"
        f"{' (--quick)' if args.quick else ''}; medians (min–max); "
        "÷ esmtpkit = per-round ratio to esmtpkit (Sink handler), median.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    for scenario in chosen:
        results[scenario.key]["summary"] = summarize(
            scenario, results[scenario.key]["runs"]
        )
        lines += [table(scenario, profile, results[scenario.key]["summary"], order)]
        unadvertised = sorted(
            {
                r["server"]
                for r in results[scenario.key]["runs"]
                if r.get("pipelining_advertised") is False
            }
        )
        durable = (
            durableRatio(results[scenario.key]["runs"], scenario.key)
            if scenario.key in DURABLE_METRICS
            else None
        )
        if durable:
            lines += ["", durable]
        if unadvertised:
            lines += [
                "",
                f"{', '.join(unadvertised)}: no PIPELINING in the EHLO reply; "
                "sent pipelined all the same, and every reply was checked.",
            ]
        lines.append("")
    report["targets"] = targets(results, profile)
    if report["targets"]:
        lines += [
            "### Targets of issues 6 and 12 (medians of per-round ratios)",
            "",
            "| target | measured | met |",
            "|---|---|---|",
        ]
        lines += [
            f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |"
            for t in report["targets"]
        ]
        lines.append("")
    if baseline is not None:
        section, report["comparison"] = comparison(results, chosen, baseline)
        lines += section + [""]
    if not any(s.name == "esmtpkit-2w" for s in specs) and "A" in keys:
        lines += ["A with 2 workers: n/a (esmtpkit has no --workers yet)", ""]
    lines += ["### Commands (PORT: a free loopback port per run)", "", "```"]
    lines += commands(results, order, baseline)
    lines += ["```", ""]
    problems = sorted(
        {
            f"{r['server']}: {line}"
            for s in results.values()
            for r in s["runs"]
            for line in r.get("server_problems", [])
        }
    )
    if problems:
        lines += ["### Errors in server output", ""] + [f"- {p}" for p in problems[:40]]
        lines.append("")
    report["seconds"] = time.monotonic() - started
    lines.append(
        f"Run took {report['seconds']:.0f} s; raw results: "
        f"{jsonPath.relative_to(REPO) if jsonPath.is_relative_to(REPO) else jsonPath}"
    )
    text = "\n".join(lines)
    report["markdown"] = text
    jsonPath.parent.mkdir(parents=True, exist_ok=True)
    jsonPath.write_text(json.dumps(report, indent=1, default=str))
    if args.chart:
        chart(results, order, args.chart)
        print(f"bench: chart written to {args.chart}", file=sys.stderr)
    print(text)
    if milter:
        runMilter(args.quick, logs, pin, jsonPath.with_name(f"{stamp}-M.json"), stamp)


def runMilter(
    quick: bool, logs: Path, pin: Pinning, jsonPath: Path, stamp: str
) -> None:
    """
    Scenario M (esmtpkit as a milter, beside Postfix alone and pymilter):
    see bench/milterbench.py. Its table is printed, its raw results go to
    C{jsonPath}.
    """
    import milterbench

    print("bench: scenario M (milter), see bench/milterbench.py", file=sys.stderr)
    lines, raw = milterbench.run(quick, logs, pin.client, pin.server)
    raw.update(started=stamp, machine=machine(), pinning=pin.note)
    jsonPath.parent.mkdir(parents=True, exist_ok=True)
    jsonPath.write_text(json.dumps(raw, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; every server and client it started is stopped")
    finally:
        removeTemporary()  # the --baseline tree
