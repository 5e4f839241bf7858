"""
Several worker processes sharing the listening sockets (C{--workers N}).

The parent opens every listening socket once, then runs N copies of the
server (C{python -m twisted esmtpkit ...}), each given the sockets as
inherited file descriptors (C{--inherited-port FD:DESCRIPTION}), which it
adopts with C{reactor.adoptStreamPort}; the kernel spreads new connections
among them. Each worker has its own reactor and handler instances. The
parent supervises them with Twisted's L{ProcessMonitor} (a worker that dies
is restarted, with a growing delay if it keeps dying), passes SIGHUP on, and
stops them on shutdown: SIGTERM to the parent is passed on to every worker,
which drains its connections (see docs/shutdown.md); the parent waits for
them up to the shutdown timeout and a margin (L{KILL_MARGIN}), then kills
those left.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from .drain import GRACE

if TYPE_CHECKING:
    # (twisted.runner.procmon installs the global reactor as it is imported.)
    from twisted.runner.procmon import ProcessMonitor

__all__ = ["WorkerSupervisor", "AdoptedPortService", "listeningDescription", "cores"]

log = Logger(namespace="esmtpkit")

FIRST_FD = 3

KILL_MARGIN = 5.0
"""
Seconds past the workers' shutdown timeout (and the drain's grace period)
after which the supervisor kills a worker that has not exited.
"""


def cores() -> int:
    """
    The number of cores this process may run on.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def listeningDescription(description: str) -> str:
    """
    The plain socket part of an esmtpkit port description: C{haproxy:} and
    implicit-TLS C{ssl:} are layers the workers add themselves.

    @raise ValueError: an C{ssl:} description with its own key (workers
        take TLS from C{--tls-cert}/C{--tls-key}).
    """
    if description.startswith(("haproxy:", "lmtp:", "milter:")):
        return listeningDescription(description.partition(":")[2])
    if description.startswith("ssl:"):
        if "privateKey=" in description or "certKey=" in description:
            raise ValueError(
                "with --workers, ssl: listeners take their certificate from "
                "--tls-cert/--tls-key"
            )
        return "tcp:" + description[len("ssl:") :]
    return description


class _Refuse(Protocol):
    def connectionMade(self) -> None:  # never: the parent does not accept
        assert self.transport is not None
        self.transport.loseConnection()


class _SpawnWithSockets:
    """
    A reactor for L{ProcessMonitor} whose C{spawnProcess} also hands the
    child the listening sockets, as file descriptors 3, 4, ...
    """

    def __init__(
        self,
        reactor: Any,
        fds: Sequence[int],
        exited: Sequence[Callable[[int], None]] = (),
    ) -> None:
        self._reactor = reactor
        self._fds = list(fds)
        self._exited = exited

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> Any:
        childFDs: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for index, fd in enumerate(self._fds):
            childFDs[FIRST_FD + index] = fd
        kwargs["childFDs"] = childFDs
        process = self._reactor.spawnProcess(protocol, *args, **kwargs)
        if self._exited:
            # Tell who wants to know of the worker's end, by its PID (gone
            # from the transport by then).
            pid, ended = process.pid, protocol.processEnded

            def processEnded(reason: Any) -> None:
                for notify in self._exited:
                    notify(pid)
                ended(reason)

            protocol.processEnded = processEnded
        return process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


class WorkerSupervisor(Service):
    """
    The parent of C{--workers N}: listens, starts N workers, keeps them
    running.

    @ivar workerEnv: variables added to the workers' environment.
    @ivar workerExited: called with a worker's PID when it has exited.
    """

    def __init__(
        self,
        workers: int,
        ports: Sequence[str],
        workerArgs: Sequence[str],
        reactor: Any = None,
        shutdownTimeout: float = 30.0,
    ) -> None:
        """
        @param workers: how many worker processes.
        @param ports: the port descriptions (as given to C{--port}).
        @param workerArgs: the C{twistd esmtpkit} options for the workers,
            without C{--workers} and C{--port}.
        @param shutdownTimeout: the workers' C{--shutdown-timeout}: how long
            a stopping worker may drain before it is killed (with
            L{KILL_MARGIN} more).
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.workers = workers
        self.ports = list(ports)
        self.workerArgs = list(workerArgs)
        self._reactor = reactor
        self._listening: list[Any] = []
        self.monitor: ProcessMonitor | None = None
        self._previousHUP: Any = None
        self._previousTERM: Any = None
        self.shutdownTimeout = shutdownTimeout
        self.workerEnv: dict[str, str] = {}
        self.workerExited: list[Callable[[int], None]] = []

    def listen(self) -> None:
        """
        Open every listening socket (the workers accept on them, not this
        process), if not done yet. C{twistd esmtpkit} calls this before it
        forks; otherwise L{startService} does.

        @raise CannotListen: one cannot be opened (the others opened are
            closed again), or its endpoint does not listen at once.
        """
        from .listeners import CannotListen, closeNow, listenNow

        if self._listening:
            return
        refuse = Factory.forProtocol(_Refuse)
        refuse.noisy = False
        try:
            for description in self.ports:
                endpoint = serverFromString(
                    self._reactor, listeningDescription(description)
                )
                port = listenNow(endpoint, refuse, description)
                if isinstance(port, Deferred):
                    port.addErrback(lambda failure: None)
                    port.cancel()
                    raise CannotListen(
                        description, "--workers needs a listener that opens at once"
                    )
                port.stopReading()  # type: ignore[attr-defined]
                self._listening.append(port)
        except CannotListen:
            for port in self._listening:
                closeNow(port)
            self._listening = []
            raise

    def _open(self) -> None:
        from .listeners import claimLock

        try:
            self.listen()
        except Exception as e:
            log.critical("{message}", message=getattr(e, "message", str(e)))
            raise
        for port in self._listening:
            claimLock(port)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()  # before twistd drops privileges

    def startService(self) -> None:
        super().startService()
        self._open()
        fds = [port.fileno() for port in self._listening]
        spawner: Any = _SpawnWithSockets(self._reactor, fds, self.workerExited)
        from twisted.runner.procmon import ProcessMonitor

        self.monitor = ProcessMonitor(reactor=spawner)
        inherited: list[str] = []
        for index, description in enumerate(self.ports):
            inherited += ["--inherited-port", f"{FIRST_FD + index}:{description}"]
        args = [
            sys.executable,
            "-m",
            "twisted",
            "--log-format",
            "text",
            "esmtpkit",
            *self.workerArgs,
            *inherited,
        ]
        for number in range(1, self.workers + 1):
            self.monitor.addProcess(
                f"worker-{number}", args, env={**os.environ, **self.workerEnv}
            )
        self.monitor.startService()
        log.info(
            "esmtpkit supervising {workers} workers on {ports}",
            workers=self.workers,
            ports=", ".join(self.ports),
        )
        if hasattr(signal, "SIGHUP"):
            try:
                self._previousHUP = signal.signal(signal.SIGHUP, self._onSIGHUP)
            except ValueError:  # not the main thread
                pass
        # Once the reactor runs (it installs its own handler as it starts).
        self._reactor.callWhenRunning(self._takeSIGTERM)

    def _takeSIGTERM(self) -> None:
        if not self.running:
            return
        try:
            # Stop the reactor without recording the signal, so that the
            # parent exits 0 once its workers have drained.
            self._previousTERM = signal.signal(signal.SIGTERM, self._onSIGTERM)
        except ValueError:  # not the main thread
            pass

    def _onSIGTERM(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._terminate)

    def _terminate(self) -> None:
        if self.running:
            log.info("esmtpkit supervisor: SIGTERM, stopping the workers")
            try:
                self._reactor.stop()
            except ReactorNotRunning:
                pass
        else:
            self.signalWorkers("TERM")  # again: they end their drains now

    def _onSIGHUP(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.signalWorkers, "HUP")

    def signalWorkers(self, signal: str) -> None:
        """
        Send C{signal} (such as C{"HUP"}) to every running worker.
        """
        assert self.monitor is not None
        for protocol in list(self.monitor.protocols.values()):
            if protocol.transport is not None:
                try:
                    protocol.transport.signalProcess(signal)
                except Exception:
                    pass

    def stopService(self) -> Deferred[None]:
        """
        Stop the workers (TERM, which makes each drain its connections,
        then KILL after the shutdown timeout and L{KILL_MARGIN} seconds)
        and close the sockets; the result fires once every worker has
        exited.
        """
        super().stopService()
        if self._previousHUP is not None:
            signal.signal(signal.SIGHUP, self._previousHUP)
        for port in self._listening:
            port.stopListening()
        self._listening = []
        monitor = self.monitor
        if monitor is None:
            return succeed(None)
        monitor.killTime = math.ceil(self.shutdownTimeout + GRACE + KILL_MARGIN)
        monitor.stopService()
        deadline = self._reactor.seconds() + monitor.killTime + 5
        done: Deferred[None] = Deferred()

        def check() -> None:
            if not monitor.protocols or self._reactor.seconds() > deadline:
                if self._previousTERM is not None:
                    signal.signal(signal.SIGTERM, self._previousTERM)
                    self._previousTERM = None
                done.callback(None)
            else:
                self._reactor.callLater(0.1, check)

        check()
        return done


@implementer(IReadDescriptor)
class _ParentWatch:
    """
    Watches a worker's standard input, a pipe from the supervisor: when it
    reaches its end, the supervisor is gone, and the worker stops too.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "esmtpkit-worker"

    def doRead(self) -> Any:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Any) -> None:
        log.info("esmtpkit worker: the supervisor is gone, stopping")
        if self._reactor.running:
            self._reactor.stop()


class ParentWatchService(Service):
    """
    In a worker: stop when the supervisor process goes away (even if it was
    killed without a chance to stop its workers).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._watch = _ParentWatch(reactor)

    def startService(self) -> None:
        super().startService()
        self._reactor.addReader(self._watch)

    def stopService(self) -> None:
        super().stopService()
        self._reactor.removeReader(self._watch)


class AdoptedPortService(Service):
    """
    Listens on a socket inherited from the supervisor, with the layers its
    description asks for (C{haproxy:}, implicit TLS for C{ssl:}).
    """

    def __init__(self, fd: int, description: str, factory: Any, tls: Any, reactor: Any):
        self.fd = fd
        self.description = description
        self.factory = factory
        self.tls = tls
        self._reactor = reactor
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        from .endpoints import splitWire, wrapFactory

        probe = socket.socket(fileno=os.dup(self.fd))
        family = probe.family
        probe.close()
        factory = wrapFactory(splitWire(self.description)[1], self.factory, self.tls)
        self.port = self._reactor.adoptStreamPort(self.fd, family, factory)
        os.close(self.fd)  # adoptStreamPort made its own copy

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()  # type: ignore[no-any-return]
        return None
