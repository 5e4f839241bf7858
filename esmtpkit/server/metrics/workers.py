"""
The metrics of C{--workers}: L{SupervisedMetrics} wraps the
L{WorkerSupervisor}: it makes a directory for prometheus_client's
multiprocess mode, gives the workers its name in C{PROMETHEUS_MULTIPROC_DIR},
serves the sum of what every worker wrote, forgets a dead worker's gauges
(L{mark_process_dead}), and removes the directory once the workers are gone.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.application.service import MultiService
from twisted.logger import Logger

from ..listeners import CannotListen
from .observer import BuildInfo
from .serving import MULTIPROCESS_ENV, _httpService

if TYPE_CHECKING:
    from ..workers import WorkerSupervisor

__all__ = ["SupervisedMetrics"]

log = Logger(namespace="esmtpkit")


class _WorkersCollector(MultiProcessCollector):
    """
    The workers' files, read again when one cannot be read: a worker that
    is starting, or was killed, may leave a file half written for a moment.
    """

    def collect(self) -> Iterator[Metric]:
        for attempt in range(3):
            try:
                return iter(list(super().collect()))
            except Exception as e:
                problem = e
                time.sleep(0.01 * (attempt + 1))
        log.warn(
            "metrics: the workers' files could not be read: {error}", error=problem
        )
        return iter(())


class SupervisedMetrics(MultiService):
    """
    The supervisor of C{--workers} with one metrics endpoint for every
    worker (prometheus_client's multiprocess mode): a directory made when
    it starts and removed once the workers have stopped, named to the
    workers in C{PROMETHEUS_MULTIPROC_DIR}; the sum of their files served
    at C{/metrics}; the gauges of a worker that dies forgotten
    (L{mark_process_dead}), its counters kept.

    @ivar supervisor: the L{WorkerSupervisor}.
    @ivar registry: the registry served: the workers' files, and
        C{esmtpkit_build_info}.
    @ivar path: the multiprocess directory while running, else L{None}.
    """

    def __init__(self, supervisor: WorkerSupervisor, description: str) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.registry = CollectorRegistry()
        self.registry.register(BuildInfo())
        self.path: str | None = None
        self._collector: _WorkersCollector | None = None
        supervisor.setServiceParent(self)
        self.http = _httpService(description, self.registry)
        self.http.setServiceParent(self)
        supervisor.workerExited.append(self._workerExited)

    def listen(self) -> None:
        """
        Open the workers' listening sockets, then the metrics endpoint's
        (C{twistd esmtpkit} calls this before it forks).

        @raise esmtpkit.server.listeners.CannotListen: one cannot be opened
            (those opened are closed again).
        """
        self.supervisor.listen()
        try:
            self.http.listen()
        except CannotListen:
            self.supervisor.close()
            raise

    def privilegedStartService(self) -> None:
        self._prepare()
        super().privilegedStartService()

    def startService(self) -> None:
        self._prepare()
        super().startService()

    def _prepare(self) -> None:
        if self.path is not None:
            return
        self.path = tempfile.mkdtemp(prefix="esmtpkit-metrics-")
        self._collector = _WorkersCollector(None, path=self.path)
        self.registry.register(self._collector)
        self.supervisor.workerEnv[MULTIPROCESS_ENV] = self.path

    def _workerExited(self, pid: int) -> None:
        if self.path is not None:
            mark_process_dead(pid, self.path)

    def stopService(self) -> Any:
        stopped = super().stopService()

        def remove(result: Any) -> Any:
            if self.path is not None:
                assert self._collector is not None
                self.registry.unregister(self._collector)
                shutil.rmtree(self.path, ignore_errors=True)
                self.path = None
            return result

        return stopped.addBoth(remove)
