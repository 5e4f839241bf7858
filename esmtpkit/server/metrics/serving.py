"""
Serving a server's metrics: L{MetricsSite} serves a registry at
C{/metrics} with C{twisted.web}; L{serveMetrics} adds a L{MetricsObserver}
and its site to an L{ESMTPService} (in a C{--workers} worker, the observer
only: it counts into the directory named in L{MULTIPROCESS_ENV}, and the
supervisor serves, see L{esmtpkit.server.metrics.workers}).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..listeners import ListenerService
from .observer import KNOWN_VERBS, MetricsObserver

if TYPE_CHECKING:
    from ..service import ESMTPService

__all__ = ["MetricsSite", "serveMetrics", "checkEndpoint", "MULTIPROCESS_ENV"]

log = Logger(namespace="esmtpkit")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsSite(Site):
    """
    A C{twisted.web} site with the metrics of C{registry} at C{/metrics}
    (prometheus_client's C{MetricsResource}), and no access log.
    """

    noisy = False

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client.twisted import MetricsResource

        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry))
        super().__init__(root)

    def log(self, request: Any) -> None:
        pass  # a scrape every few seconds is not news


def checkEndpoint(description: str) -> None:
    """
    @raise ValueError: C{description} is not a server endpoint description.
    """
    from twisted.internet import reactor

    try:
        serverFromString(reactor, description)
    except Exception as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None


def _httpService(description: str, registry: CollectorRegistry) -> ListenerService:
    """
    The listener of the metrics endpoint: opened with the SMTP listeners,
    before twistd forks, so that a port in use stops start-up as theirs
    does (L{esmtpkit.server.listeners}).
    """
    from twisted.internet import reactor

    return ListenerService(
        serverFromString(reactor, description), MetricsSite(registry), description
    )


def _verbsOf(service: ESMTPService) -> set[str]:
    verbs = set(KNOWN_VERBS)
    for factory in (service.factory, service.lmtpFactory):
        if factory is not None:
            verbs.update(getattr(factory.protocol, "_verbs", ()))
    return verbs


def serveMetrics(
    service: ESMTPService, description: str, worker: bool = False
) -> MetricsObserver | None:
    """
    Count C{service}'s events with a new L{MetricsObserver}, and serve them
    at C{/metrics} on endpoint C{description}, as a child service of
    C{service}.

    @param worker: C{service} is a C{--workers} worker: count into the
        multiprocess directory the supervisor named in
        C{PROMETHEUS_MULTIPROC_DIR}, and serve nothing (the supervisor
        does).
    @return: the observer, or L{None} for a worker without the directory.
    """
    if worker and not os.environ.get(MULTIPROCESS_ENV):
        log.error(
            "esmtpkit worker: --metrics without {env}; not counting",
            env=MULTIPROCESS_ENV,
        )
        return None
    observer = MetricsObserver(verbs=_verbsOf(service), buildInfo=not worker)
    service.factory.events.add(observer)  # the LMTP factory shares them
    if not worker:
        _httpService(description, observer.registry).setServiceParent(service)
    return observer
