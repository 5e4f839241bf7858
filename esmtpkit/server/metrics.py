"""
Prometheus metrics (C{twistd esmtpkit --metrics ENDPOINT}).

L{MetricsObserver} is a L{ServerObserver}: it counts what the server's
events say, into a L{CollectorRegistry} of its own (never the global
default), so several servers in one process, and tests, do not share
counts. It never reads the log.

Every label holds a value from a fixed set: a verb the client sends that
esmtpkit does not know is counted as C{UNKNOWN}, and any other value
outside its set (a hook, a TLS version, a SASL mechanism, a limit) as
C{other}. The labelled series whose values are known are made up front,
so each event costs a dictionary lookup and an increment.

L{MetricsSite} serves a registry at C{/metrics} with C{twisted.web}.
L{serveMetrics} adds both to an L{ESMTPService}; under C{--workers},
L{SupervisedMetrics} wraps the L{WorkerSupervisor}: it makes a directory
for prometheus_client's multiprocess mode, gives the workers its name in
C{PROMETHEUS_MULTIPROC_DIR}, serves the sum of what every worker wrote,
forgets a dead worker's gauges (L{mark_process_dead}), and removes the
directory once the workers are gone. See docs/metrics.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..core.events import LIMITS, OUTCOMES, ServerObserver
from ..interfaces import IESMTPHandler
from ..smtp.lmtp import LMTPProtocol
from ..smtp.protocol import ESMTPProtocol
from .listeners import CannotListen, ListenerService

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from ..reply import Reply
    from ..session import Session, TLSInfo, Transaction
    from .service import ESMTPService
    from .workers import WorkerSupervisor

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

log = Logger(namespace="esmtpkit")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

KNOWN_VERBS = frozenset(
    {"CONNECT", "EOM", "UNKNOWN", *ESMTPProtocol._verbs, *LMTPProtocol._verbs}
)
"""
The C{verb} values of L{ServerObserver.commandReplied} that are counted
under their own name: the greeting, the end of a message, and every
command SMTP and LMTP know. Anything else is C{UNKNOWN}.
"""

HOOKS = frozenset(name for name in IESMTPHandler.names(all=True) if name.isupper()) | {
    "SASL",
    "credentials check",
}

TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256")
REFUSALS = ("connections", "connections-per-ip")
REPLY_CLASSES = ("2xx", "3xx", "4xx", "5xx")
OTHER = "other"

SIZE_BUCKETS = tuple(float(4**n * 1024) for n in range(10))  # 1 KiB ... 256 MiB
RECIPIENT_BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0, 1000.0)
DURATION_BUCKETS = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
)


class BuildInfo:
    """
    A collector of C{esmtpkit_build_info}: always 1, with the version as
    a label. A collector rather than a L{Gauge}, so that workers never
    write it to the multiprocess files (the supervisor reports it).
    """

    def collect(self) -> Iterator[Metric]:
        from .. import __version__

        family = GaugeMetricFamily(
            "esmtpkit_build_info",
            "esmtpkit's version; always 1.",
            labels=["version"],
        )
        family.add_metric([__version__], 1.0)
        yield family

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class MetricsObserver(ServerObserver):
    """
    Counts a server's events as Prometheus metrics (names in
    docs/metrics.md).

        observer = MetricsObserver()
        factory = ESMTPFactory(MyHandler, observers=[observer])
        # observer.registry holds the metrics; serve it with MetricsSite.

    @ivar registry: the L{CollectorRegistry} the metrics are in.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        verbs: Iterable[str] = KNOWN_VERBS,
        buildInfo: bool = True,
    ) -> None:
        """
        @param registry: where to put the metrics; a new registry by
            default.
        @param verbs: the command verbs counted under their own name
            (the others are C{UNKNOWN}): by default every verb of SMTP and
            LMTP, C{CONNECT} and C{EOM}; add those of your own commands.
        @param buildInfo: whether to add C{esmtpkit_build_info} to the
            registry.
        """
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
        self.registry = registry
        if buildInfo:
            registry.register(BuildInfo())
        r = registry

        self.connectionsActive = Gauge(
            "esmtpkit_connections_active",
            "Connections open now (refused ones too, until they are closed).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections = Counter(
            "esmtpkit_connections_total", "Connections opened.", registry=r
        )
        refused = Counter(
            "esmtpkit_connections_refused_total",
            "Connections refused (421) for a connection limit, by limit.",
            ["reason"],
            registry=r,
        )
        self._refused = {reason: refused.labels(reason) for reason in REFUSALS}
        self._refusedOther = refused.labels(OTHER)

        commands = Counter(
            "esmtpkit_commands_total",
            "Replies sent, by the command they answer (CONNECT: the greeting, "
            "EOM: the end of a message, once per recipient under LMTP) and "
            "reply class.",
            ["verb", "reply_class"],
            registry=r,
        )
        # By verb, a row indexed by the reply code's first digit (2 to 5).
        self._commands: dict[str, tuple[Any, ...]] = {}
        for verb in sorted({*verbs, "UNKNOWN"}):
            children = [commands.labels(verb, c) for c in REPLY_CLASSES]
            self._commands[verb] = (None, None, *children)
        self._unknownVerb = self._commands["UNKNOWN"]

        transactions = Counter(
            "esmtpkit_transactions_total",
            "Mail transactions ended, by outcome (accepted, partial, refused, "
            "aborted).",
            ["outcome"],
            registry=r,
        )
        self._transactions = {o: transactions.labels(o) for o in OUTCOMES}
        self.messages = Counter(
            "esmtpkit_messages_received_total",
            "Messages accepted for at least one recipient.",
            registry=r,
        )
        self.receivedBytes = Counter(
            "esmtpkit_received_bytes_total",
            "Bytes of the messages counted by esmtpkit_messages_received_total.",
            registry=r,
        )
        self.recipients = Histogram(
            "esmtpkit_message_recipients",
            "Recipients a received message was accepted for.",
            buckets=RECIPIENT_BUCKETS,
            registry=r,
        )
        self.messageSize = Histogram(
            "esmtpkit_message_size_bytes",
            "Size of the received messages, in bytes.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )

        self._hookDurations = Histogram(
            "esmtpkit_hook_duration_seconds",
            "Time a handler hook took (until its Deferred fired), by hook.",
            ["hook"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        # Hooks get their series when first called: the set is bounded,
        # but most handlers use few of its hooks.
        self._hooks: dict[str, Any] = {}
        hookFailures = Counter(
            "esmtpkit_hook_failures_total",
            "Hooks that raised or whose Deferred failed, by hook.",
            ["hook"],
            registry=r,
        )
        self._hookFailures = hookFailures
        self.handlerFailures = Counter(
            "esmtpkit_handler_failures_total",
            "Connections whose handler could not be built (421).",
            registry=r,
        )

        tls = Counter(
            "esmtpkit_tls_handshakes_total",
            "TLS handshakes (STARTTLS or implicit TLS), by version and outcome "
            "(established, failed; the version of a failed one is unknown).",
            ["version", "outcome"],
            registry=r,
        )
        self._tls = {v: tls.labels(v, "established") for v in TLS_VERSIONS}
        self._tlsOther = tls.labels(OTHER, "established")
        self._tlsFailed = tls.labels("unknown", "failed")

        auth = Counter(
            "esmtpkit_auth_attempts_total",
            "AUTH attempts, by SASL mechanism and outcome (succeeded, failed).",
            ["mechanism", "outcome"],
            registry=r,
        )
        self._authSucceeded = {m: auth.labels(m, "succeeded") for m in MECHANISMS}
        self._authFailed = {m: auth.labels(m, "failed") for m in MECHANISMS}
        self._authOther = (
            auth.labels(OTHER, "succeeded"),
            auth.labels(OTHER, "failed"),
        )

        limits = Counter(
            "esmtpkit_limit_hits_total",
            "Protections triggered, by limit (connection limits are in "
            "esmtpkit_connections_refused_total).",
            ["limit"],
            registry=r,
        )
        self._limits = {limit: limits.labels(limit) for limit in LIMITS}
        self._limitOther = limits.labels(OTHER)

    # -- connections --------------------------------------------------------

    def connectionOpened(self, session: Session) -> None:
        self.connections.inc()
        self.connectionsActive.inc()

    def connectionClosed(self, session: Session) -> None:
        self.connectionsActive.dec()

    def connectionRefused(self, session: Session, limit: str, reply: Reply) -> None:
        self._refused.get(limit, self._refusedOther).inc()

    def handlerFailed(self, session: Session, failure: Failure) -> None:
        self.handlerFailures.inc()

    # -- commands and transactions ------------------------------------------

    def commandReplied(self, session: Session, verb: str, reply: Reply) -> None:
        # Reply codes are 200 to 599: the index is 2 to 5.
        (self._commands.get(verb) or self._unknownVerb)[reply.code // 100].inc()

    def transactionEnded(
        self,
        session: Session,
        transaction: Transaction,
        outcome: str,
        replies: Sequence[Reply],
    ) -> None:
        self._transactions[outcome].inc()
        if outcome == "accepted":
            accepted = len(replies)
        elif outcome == "partial":
            accepted = sum(1 for reply in replies if reply.code < 300)
        else:
            return
        size = transaction.size
        self.messages.inc()
        self.receivedBytes.inc(size)
        self.messageSize.observe(size)
        self.recipients.observe(accepted)

    # -- hooks ------------------------------------------------------------

    def hookFinished(self, session: Session, hook: str, seconds: float) -> None:
        child = self._hooks.get(hook)
        if child is None:
            if hook not in HOOKS:
                hook = OTHER  # and the cache stays bounded too
            child = self._hooks[hook] = self._hookDurations.labels(hook)
        child.observe(seconds)

    def hookFailed(self, session: Session, hook: str, failure: Failure) -> None:
        self._hookFailures.labels(hook if hook in HOOKS else OTHER).inc()

    # -- TLS, AUTH, limits ------------------------------------------------

    def tlsEstablished(self, session: Session, tls: TLSInfo) -> None:
        self._tls.get(tls.version, self._tlsOther).inc()

    def tlsFailed(self, session: Session) -> None:
        self._tlsFailed.inc()

    def authSucceeded(self, session: Session, mechanism: str, identity: Any) -> None:
        self._authSucceeded.get(mechanism, self._authOther[0]).inc()

    def authFailed(self, session: Session, mechanism: str, failures: int) -> None:
        self._authFailed.get(mechanism, self._authOther[1]).inc()

    def limitReached(self, session: Session, limit: str, detail: str) -> None:
        self._limits.get(limit, self._limitOther).inc()


# -- serving --------------------------------------------------------------


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
