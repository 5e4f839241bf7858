"""
Prometheus metrics (C{twistd esmtpkit --metrics ENDPOINT}).

L{MetricsObserver} (L{esmtpkit.server.metrics.observer}) is a
L{ServerObserver <esmtpkit.ServerObserver>}: it counts what the server's
events say, into a registry of its own, and never reads the log.
L{MetricsSite} serves a registry at C{/metrics} with C{twisted.web}, and
L{serveMetrics} adds both to an L{ESMTPService <esmtpkit.ESMTPService>}
(L{esmtpkit.server.metrics.serving}). Under C{--workers},
L{SupervisedMetrics} (L{esmtpkit.server.metrics.workers}) wraps the
L{WorkerSupervisor <esmtpkit.server.workers.WorkerSupervisor>} and serves
the sum of what every worker counted (prometheus_client's multiprocess
mode). See docs/metrics.md.
"""

from .observer import KNOWN_VERBS, BuildInfo, MetricsObserver
from .serving import MULTIPROCESS_ENV, MetricsSite, checkEndpoint, serveMetrics
from .workers import SupervisedMetrics

__all__ = [
    "MetricsObserver",
    "MetricsSite",
    "BuildInfo",
    "serveMetrics",
    "SupervisedMetrics",
    "checkEndpoint",
    "KNOWN_VERBS",
    "MULTIPROCESS_ENV",
]
