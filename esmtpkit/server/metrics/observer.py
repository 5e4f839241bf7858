"""
L{MetricsObserver}: a L{ServerObserver} that counts what the server's
events say, into a L{CollectorRegistry} of its own (never the global
default), so several servers in one process, and tests, do not share
counts. It never reads the log.

Every label holds a value from a fixed set: a verb the client sends that
esmtpkit does not know is counted as C{UNKNOWN}, and any other value
outside its set (a hook, a TLS version, a SASL mechanism, a limit) as
C{other}. The labelled series whose values are known are made up front,
so each event costs a dictionary lookup and an increment.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from ...core.events import LIMITS, OUTCOMES, ServerObserver
from ...interfaces import IESMTPHandler
from ...smtp.lmtp import LMTPProtocol
from ...smtp.protocol import ESMTPProtocol

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from ...reply import Reply
    from ...session import Session, TLSInfo, Transaction

__all__ = ["MetricsObserver", "BuildInfo", "KNOWN_VERBS"]

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
        from ... import __version__

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
