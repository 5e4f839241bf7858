"""
Tests for the Prometheus metrics (L{esmtpkit.server.metrics}): the
observer's exact counts and label values after scripted SMTP and LMTP
conversations (an unknown verb, a refused RCPT, a message over the size
limit, an LMTP partial result, TLS, AUTH, hooks, connection limits); every
label value bounded whatever the client sends; one registry per observer;
the observer registered only with C{--metrics}; and the multiprocess
directory of C{--workers} made, cleaned after a dead worker and removed.

The end-to-end scrapes over HTTP of a real C{twistd} process (alone and
under C{--workers 2}) are in C{test_metrics_process.py}.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler, PerRecipient
from esmtpkit.core.events import LogObserver
from esmtpkit.security.auth import makePortal
from esmtpkit.server import tap
from esmtpkit.server.listeners import ListenerService
from esmtpkit.server.metrics import (
    KNOWN_VERBS,
    MULTIPROCESS_ENV,
    MetricsObserver,
    MetricsSite,
    SupervisedMetrics,
    serveMetrics,
)
from esmtpkit.server.service import ESMTPService
from esmtpkit.server.workers import WorkerSupervisor
from esmtpkit.testing import LMTPTestConnection, SMTPTestConnection

from .test_tls import serverTLS
from .tlshelpers import TLSTestConnection, memoryChecker, plain

MESSAGE = b"Subject: metrics\r\n\r\nHello.\r\n"  # 29 bytes


def samples(registry: CollectorRegistry, prefix: str = "") -> dict[Any, float]:
    """
    Every sample of C{registry} whose value is not zero, as
    C{{(name, ((label, value), ...)): value}}, without the C{_created}
    timestamps and the histogram buckets (checked on their own); only
    names starting with C{prefix} if given.
    """
    found = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name.endswith(("_created", "_bucket")) or not sample.value:
                continue
            if not sample.name.startswith(prefix):
                continue
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def labelValues(registry: CollectorRegistry, label: str) -> set[str]:
    """
    Every value label C{label} has in C{registry}, zero samples included.
    """
    return {
        sample.labels[label]
        for metric in registry.collect()
        for sample in metric.samples
        if label in sample.labels
    }


def cmd(verb: str, reply: str, value: float) -> tuple[Any, float]:
    return (
        ("esmtpkit_commands_total", (("reply_class", reply), ("verb", verb))),
        value,
    )


def one(name: str, value: float, **labels: str) -> tuple[Any, float]:
    return ((name, tuple(sorted(labels.items()))), value)


class Picky(ESMTPHandler):
    """
    Accepts mail for example.org only.
    """

    def RCPT(self, recipient: str, params: Any) -> Any:
        if not recipient.endswith("@example.org"):
            return (550, "5.7.1 Relaying denied")
        return None


class ConversationTests(SynchronousTestCase):
    """
    Exact counts after scripted conversations.
    """

    def test_smtpConversation(self) -> None:
        """
        One SMTP connection: the greeting, EHLO, an unknown verb, one
        message with a refused and an accepted recipient, one message over
        the size limit, RSET, QUIT. Every non-zero sample is as expected,
        and nothing the client chose is a label value.
        """
        metrics = MetricsObserver()
        conn = SMTPTestConnection(Picky, observers=[metrics], maxMessageSize=100)
        self.assertEqual(conn.command("EHLO client.example").code, 250)
        self.assertEqual(conn.command("XYZZY plugh").code, 500)
        conn.command("MAIL FROM:<alice@example.com>")
        self.assertEqual(conn.command("RCPT TO:<bob@elsewhere.net>").code, 550)
        self.assertEqual(conn.command("RCPT TO:<carol@example.org>").code, 250)
        self.assertEqual(conn.sendMessage(MESSAGE).code, 250)
        conn.command("MAIL FROM:<alice@example.com>")
        conn.command("RCPT TO:<carol@example.org>")
        self.assertEqual(
            conn.sendMessage(b"Subject: big\r\n\r\n" + b"x" * 200).code, 552
        )
        self.assertEqual(conn.command("RSET").code, 250)
        self.assertEqual(conn.command("QUIT").code, 221)
        self.assertTrue(conn.closed)

        self.assertEqual(
            samples(metrics.registry, "esmtpkit_commands"),
            dict(
                [
                    cmd("CONNECT", "2xx", 1),
                    cmd("EHLO", "2xx", 1),
                    cmd("UNKNOWN", "5xx", 1),
                    cmd("MAIL", "2xx", 2),
                    cmd("RCPT", "5xx", 1),
                    cmd("RCPT", "2xx", 2),
                    cmd("DATA", "3xx", 2),
                    cmd("EOM", "2xx", 1),
                    cmd("EOM", "5xx", 1),
                    cmd("RSET", "2xx", 1),
                    cmd("QUIT", "2xx", 1),
                ]
            ),
        )
        self.assertNotIn("XYZZY", labelValues(metrics.registry, "verb"))
        self.assertEqual(
            samples(metrics.registry),
            {
                **samples(metrics.registry, "esmtpkit_commands"),
                **samples(metrics.registry, "esmtpkit_hook_duration_seconds"),
                **dict(
                    [
                        one("esmtpkit_build_info", 1, version="0.1.0"),
                        one("esmtpkit_connections_total", 1),
                        # The size limit refused the second message while it
                        # was read: aborted, not refused.
                        one("esmtpkit_transactions_total", 1, outcome="accepted"),
                        one("esmtpkit_transactions_total", 1, outcome="aborted"),
                        one("esmtpkit_messages_received_total", 1),
                        one("esmtpkit_received_bytes_total", len(MESSAGE)),
                        one("esmtpkit_message_size_bytes_count", 1),
                        one("esmtpkit_message_size_bytes_sum", len(MESSAGE)),
                        one("esmtpkit_message_recipients_count", 1),
                        one("esmtpkit_message_recipients_sum", 1),
                        one("esmtpkit_limit_hits_total", 1, limit="message-size"),
                    ]
                ),
            },
        )
        # Closed: no connection is active any more.
        self.assertEqual(
            metrics.registry.get_sample_value("esmtpkit_connections_active"), 0
        )
        # The hooks, each with its count (no time passes on the test clock;
        # ESMTPHandler's HEADER, EOH and BODY are not overridden, so never
        # called).
        self.assertEqual(
            {
                dict(labels)["hook"]: value
                for (name, labels), value in samples(
                    metrics.registry, "esmtpkit_hook_duration_seconds_count"
                ).items()
            },
            {
                "CONNECT": 1,
                "EHLO": 1,
                "UNKNOWN": 1,
                "MAIL": 2,
                "RCPT": 3,
                "DATA": 2,
                "EOM": 1,
                "ABORT": 1,
                "RSET": 1,
                "QUIT": 1,
                "DISCONNECT": 1,
            },
        )

    def test_lmtpPartial(self) -> None:
        """
        Under LMTP, an end of message accepted for one recipient of two is
        a partial transaction, a received message with one recipient, and
        an EOM reply of each class.
        """

        class Half(ESMTPHandler):
            def EOM(self) -> Any:
                return PerRecipient([None, (550, "5.1.1 No such user")])

        metrics = MetricsObserver()
        conn = LMTPTestConnection(Half, observers=[metrics])
        conn.command("LHLO client.example")
        conn.command("MAIL FROM:<alice@example.com>")
        conn.command("RCPT TO:<bob@example.org>")
        conn.command("RCPT TO:<carol@example.org>")
        self.assertEqual([r.code for r in conn.sendMessage(MESSAGE)], [250, 550])
        conn.command("QUIT")
        found = samples(metrics.registry)
        self.assertEqual(
            samples(metrics.registry, "esmtpkit_commands"),
            dict(
                [
                    cmd("CONNECT", "2xx", 1),
                    cmd("LHLO", "2xx", 1),
                    cmd("MAIL", "2xx", 1),
                    cmd("RCPT", "2xx", 2),
                    cmd("DATA", "3xx", 1),
                    cmd("EOM", "2xx", 1),
                    cmd("EOM", "5xx", 1),
                    cmd("QUIT", "2xx", 1),
                ]
            ),
        )
        expected = dict(
            [
                one("esmtpkit_transactions_total", 1, outcome="partial"),
                one("esmtpkit_messages_received_total", 1),
                one("esmtpkit_received_bytes_total", len(MESSAGE)),
                one("esmtpkit_message_recipients_count", 1),
                one("esmtpkit_message_recipients_sum", 1),
                one("esmtpkit_message_size_bytes_sum", len(MESSAGE)),
            ]
        )
        self.assertEqual({k: found.get(k) for k in expected}, expected)
        self.assertEqual(
            metrics.registry.get_sample_value(
                "esmtpkit_transactions_total", {"outcome": "accepted"}
            ),
            0,
        )

    def test_refusedAndLimits(self) -> None:
        """
        A message the handler refuses at its end, a recipient over
        --max-recipients, a line over --max-line-length: a refused
        transaction, not a received message, and the limits by name.
        """

        class NoThanks(ESMTPHandler):
            def EOM(self) -> Any:
                return (554, "5.7.1 No thanks")

        metrics = MetricsObserver()
        conn = SMTPTestConnection(
            NoThanks, observers=[metrics], maxRecipients=1, maxLineLength=600
        )
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<alice@example.com>")
        conn.command("RCPT TO:<bob@example.org>")
        self.assertEqual(conn.command("RCPT TO:<carol@example.org>").code, 452)
        self.assertEqual(conn.sendMessage(MESSAGE).code, 554)
        self.assertEqual(conn.command("NOOP " + "x" * 700).code, 500)
        found = samples(metrics.registry)
        for key, value in [
            one("esmtpkit_transactions_total", 1, outcome="refused"),
            one("esmtpkit_limit_hits_total", 1, limit="recipients"),
            one("esmtpkit_limit_hits_total", 1, limit="line-length"),
            cmd("RCPT", "4xx", 1),
            cmd("EOM", "5xx", 1),
            cmd("UNKNOWN", "5xx", 1),  # the cut line's verb is not known
        ]:
            self.assertEqual(found.get(key), value, key)
        self.assertNotIn(("esmtpkit_messages_received_total", ()), found)
        self.assertNotIn(("esmtpkit_message_size_bytes_count", ()), found)

    def test_connections(self) -> None:
        """
        Active connections go up and down; a connection over
        --max-connections is counted, refused by its limit, and closed.
        """
        metrics = MetricsObserver()
        conn = SMTPTestConnection(ESMTPHandler, observers=[metrics], maxConnections=1)
        value = metrics.registry.get_sample_value
        self.assertEqual(value("esmtpkit_connections_active"), 1)
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", "192.0.2.9", 1)
        )
        extra = conn.factory.buildProtocol(None)
        transport.protocol = extra
        extra.makeConnection(transport)
        self.assertEqual(
            value("esmtpkit_connections_refused_total", {"reason": "connections"}), 1
        )
        self.assertEqual(
            value(
                "esmtpkit_connections_refused_total", {"reason": "connections-per-ip"}
            ),
            0,
        )
        self.assertEqual(value("esmtpkit_connections_total"), 2)
        self.assertEqual(value("esmtpkit_connections_active"), 1)  # refused: gone
        conn.close()
        self.assertEqual(value("esmtpkit_connections_active"), 0)
        self.assertEqual(value("esmtpkit_connections_total"), 2)

    def test_tlsAndAuth(self) -> None:
        """
        STARTTLS completed (TLSv1.3), a failed and a good AUTH PLAIN; a
        handshake that never completes is a failed one.
        """
        metrics = MetricsObserver()
        conn = TLSTestConnection(
            ESMTPHandler,
            tls=serverTLS(),
            portal=makePortal([memoryChecker(alice="pw")]),
            observers=[metrics],
            logLevel=LogLevel.warn,
        )
        conn.command("EHLO client.example")
        self.assertEqual(conn.starttls().code, 220)
        conn.command("EHLO client.example")
        self.assertEqual(conn.command("AUTH PLAIN " + plain("alice", "bad")).code, 535)
        conn.clock.advance(10)
        self.assertEqual(conn.command("AUTH PLAIN " + plain("alice", "pw")).code, 235)
        other = TLSTestConnection(
            ESMTPHandler, tls=serverTLS(), observers=[metrics], logLevel=LogLevel.warn
        )
        other.command("EHLO client.example")
        self.assertEqual(other.command("STARTTLS").code, 220)
        other.close()
        self.assertEqual(
            samples(metrics.registry, "esmtpkit_tls"),
            dict(
                [
                    one(
                        "esmtpkit_tls_handshakes_total",
                        1,
                        version="TLSv1.3",
                        outcome="established",
                    ),
                    one(
                        "esmtpkit_tls_handshakes_total",
                        1,
                        version="unknown",
                        outcome="failed",
                    ),
                ]
            ),
        )
        self.assertEqual(
            samples(metrics.registry, "esmtpkit_auth"),
            dict(
                [
                    one(
                        "esmtpkit_auth_attempts_total",
                        1,
                        mechanism="PLAIN",
                        outcome="failed",
                    ),
                    one(
                        "esmtpkit_auth_attempts_total",
                        1,
                        mechanism="PLAIN",
                        outcome="succeeded",
                    ),
                ]
            ),
        )
        self.assertEqual(
            metrics.registry.get_sample_value(
                "esmtpkit_commands_total", {"verb": "AUTH", "reply_class": "5xx"}
            ),
            1,
        )

    def test_hooks(self) -> None:
        """
        A Deferred hook's time on the clock lands in its bucket; a hook that
        raises is a hook failure; a handler factory that raises is a
        handler failure.
        """
        pending: list[Deferred[Any]] = []

        class Slow(ESMTPHandler):
            def NOOP(self) -> Any:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d

            def VRFY(self, address: str) -> Any:
                raise KeyError("bug")

        metrics = MetricsObserver()
        conn = SMTPTestConnection(Slow, observers=[metrics])
        conn.command("HELO client.example")
        conn.send(b"NOOP\r\n")
        conn.clock.advance(3)
        pending[0].callback(None)
        self.assertEqual(conn.replies()[0].code, 250)
        self.assertEqual(conn.command("VRFY bob").code, 451)
        value = metrics.registry.get_sample_value
        noop = {"hook": "NOOP"}
        self.assertEqual(value("esmtpkit_hook_duration_seconds_count", noop), 1)
        self.assertEqual(value("esmtpkit_hook_duration_seconds_sum", noop), 3.0)
        self.assertEqual(
            value("esmtpkit_hook_duration_seconds_bucket", {**noop, "le": "1.0"}), 0
        )
        self.assertEqual(
            value("esmtpkit_hook_duration_seconds_bucket", {**noop, "le": "5.0"}), 1
        )
        self.assertEqual(
            samples(metrics.registry, "esmtpkit_hook_failures"),
            dict([one("esmtpkit_hook_failures_total", 1, hook="VRFY")]),
        )

        def broken() -> Any:
            raise RuntimeError("no handler")

        failed = SMTPTestConnection(broken, observers=[metrics])
        self.assertEqual(failed.greeting.code, 421)  # type: ignore[union-attr]
        self.assertEqual(value("esmtpkit_handler_failures_total"), 1)


class BoundedLabelTests(SynchronousTestCase):
    """
    No label holds a value the client chose.
    """

    def test_verbs(self) -> None:
        """
        Two hundred different made-up verbs are all UNKNOWN; the verb
        label only ever holds known verbs.
        """
        metrics = MetricsObserver()
        conn = SMTPTestConnection(
            ESMTPHandler, observers=[metrics], hardErrorLimit=0, softErrorLimit=0
        )
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        for n in range(200):
            verb = "X" + letters[n % 26] + letters[n // 26] + "Q"
            self.assertEqual(conn.command(f"{verb} <bob@example.org>").code, 500)
        self.assertEqual(
            metrics.registry.get_sample_value(
                "esmtpkit_commands_total", {"verb": "UNKNOWN", "reply_class": "5xx"}
            ),
            200,
        )
        self.assertLessEqual(labelValues(metrics.registry, "verb"), KNOWN_VERBS)
        for label in ("reason", "outcome", "limit", "mechanism", "version", "hook"):
            for value in labelValues(metrics.registry, label):
                self.assertNotIn("@", value)

    def test_otherValues(self) -> None:
        """
        Values outside their known sets, told to the observer directly,
        are counted as "other".
        """
        metrics = MetricsObserver()
        session: Any = None
        tls: Any = type("TLS", (), {"version": "SSLv3", "cipher": "x"})()
        metrics.tlsEstablished(session, tls)
        metrics.authFailed(session, "X-SECRET-bob@example.org", 1)
        metrics.limitReached(session, "made-up", "detail")
        metrics.connectionRefused(session, "made-up", None)  # type: ignore[arg-type]
        metrics.hookFinished(session, "bob@example.org", 0.5)
        value = metrics.registry.get_sample_value
        self.assertEqual(
            value(
                "esmtpkit_tls_handshakes_total",
                {"version": "other", "outcome": "established"},
            ),
            1,
        )
        self.assertEqual(
            value(
                "esmtpkit_auth_attempts_total",
                {"mechanism": "other", "outcome": "failed"},
            ),
            1,
        )
        self.assertEqual(value("esmtpkit_limit_hits_total", {"limit": "other"}), 1)
        self.assertEqual(
            value("esmtpkit_connections_refused_total", {"reason": "other"}), 1
        )
        self.assertEqual(
            value("esmtpkit_hook_duration_seconds_count", {"hook": "other"}), 1
        )
        for label in ("mechanism", "hook"):
            self.assertNotIn(
                "bob@example.org", str(labelValues(metrics.registry, label))
            )


class RegistryTests(SynchronousTestCase):
    """
    Each observer has its own registry.
    """

    def test_separateRegistries(self) -> None:
        """
        Two observers count their own servers' connections only, and
        nothing is put in prometheus_client's global registry.
        """
        first, second = MetricsObserver(), MetricsObserver()
        self.assertIsNot(first.registry, second.registry)
        SMTPTestConnection(ESMTPHandler, observers=[first]).command("QUIT")
        SMTPTestConnection(ESMTPHandler, observers=[second]).command("QUIT")
        SMTPTestConnection(ESMTPHandler, observers=[second]).command("QUIT")
        self.assertEqual(
            first.registry.get_sample_value("esmtpkit_connections_total"), 1
        )
        self.assertEqual(
            second.registry.get_sample_value("esmtpkit_connections_total"), 2
        )
        self.assertIsNone(REGISTRY.get_sample_value("esmtpkit_connections_total"))

    def test_givenRegistry(self) -> None:
        """
        An observer can count into a registry it is given.
        """
        registry = CollectorRegistry()
        metrics = MetricsObserver(registry)
        self.assertIs(metrics.registry, registry)
        self.assertEqual(
            registry.get_sample_value("esmtpkit_build_info", {"version": "0.1.0"}), 1
        )


class TapTests(SynchronousTestCase):
    """
    C{--metrics} in C{twistd esmtpkit}: the observer exists only with it.
    """

    def makeService(self, *args: str) -> Any:
        options = tap.Options()
        options.parseOptions(["--handler", "esmtpkit.handlers.Sink", *args])
        service = tap.makeService(options)
        # makeService opened the listeners (the metrics one too): close
        # them, so that nothing (HTTPFactory's clock call) outlives the test.
        self.addCleanup(self._close, service)
        return service

    def _close(self, service: Any) -> None:
        for child in [service, *getattr(service, "services", ())]:
            if isinstance(child, (ListenerService, WorkerSupervisor)):
                child.close()

    def test_withoutMetrics(self) -> None:
        """
        Without --metrics, the log is the only observer and nothing listens
        for HTTP.
        """
        service = self.makeService("--port", "tcp:0:interface=127.0.0.1")
        (observer,) = service.factory.events.observers
        self.assertIsInstance(observer, LogObserver)
        self.assertEqual(
            service.factory.events.connectionOpened, (observer.connectionOpened,)
        )
        self.assertEqual(service.factory.events.commandReplied, ())  # info: off
        self.assertFalse(
            any(isinstance(getattr(s, "factory", None), MetricsSite) for s in service)
        )

    def test_withMetrics(self) -> None:
        """
        With --metrics, a MetricsObserver follows the log (shared by the
        LMTP listener), and a child service serves its registry.
        """
        service = self.makeService(
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--lmtp",
            "tcp:0:interface=127.0.0.1",
            "--metrics",
            "tcp:0:interface=127.0.0.1",
        )
        log, metrics = service.factory.events.observers
        self.assertIsInstance(metrics, MetricsObserver)
        self.assertIs(service.lmtpFactory.events, service.factory.events)
        sites = [
            s.factory
            for s in service
            if isinstance(getattr(s, "factory", None), MetricsSite)
        ]
        self.assertEqual(len(sites), 1)
        self.assertEqual(
            service.factory.events.commandReplied, (metrics.commandReplied,)
        )

    def test_badEndpoint(self) -> None:
        """
        A --metrics that is not an endpoint description is a usage error.
        """
        options = tap.Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--metrics", "nonsense:1"])
        self.assertIn("--metrics nonsense:1", str(caught.exception))

    def test_workersSupervisorServes(self) -> None:
        """
        With --workers, the supervisor is wrapped by SupervisedMetrics, and
        the workers get --metrics too (to count, not to serve).
        """
        service = self.makeService(
            "--workers", "2", "--port", "tcp:0", "--metrics", "tcp:0"
        )
        self.assertIsInstance(service, SupervisedMetrics)
        self.assertIn("--metrics=tcp:0", service.supervisor.workerArgs)

    def test_workerWithoutDirectory(self) -> None:
        """
        A worker without PROMETHEUS_MULTIPROC_DIR does not count (there is
        nobody to read it) and serves nothing.
        """
        previous = os.environ.pop(MULTIPROCESS_ENV, None)
        try:
            service = ESMTPService(ESMTPHandler, ["tcp:0:interface=127.0.0.1"])
            self.assertIsNone(serveMetrics(service, "tcp:0", worker=True))
            self.assertEqual(len(service.factory.events.observers), 1)
        finally:
            if previous is not None:
                os.environ[MULTIPROCESS_ENV] = previous


class _FakeSupervisor(Service):
    def __init__(self) -> None:
        self.workerEnv: dict[str, str] = {}
        self.workerExited: list[Any] = []


class SupervisedMetricsTests(SynchronousTestCase):
    """
    The multiprocess directory of C{--workers}.
    """

    def test_directory(self) -> None:
        """
        Started, the directory exists and is named to the workers; a dead
        worker's live gauges go, its counters stay; stopped, it is removed.
        """
        supervisor: Any = _FakeSupervisor()
        metrics = SupervisedMetrics(supervisor, "tcp:0:interface=127.0.0.1")
        # Without the HTTP listener: this test is about the directory.
        http = [s for s in metrics if s is not supervisor][0]
        http.disownServiceParent()
        self.assertIsInstance(metrics, MultiService)
        metrics.startService()
        try:
            path = Path(supervisor.workerEnv[MULTIPROCESS_ENV])
            self.assertTrue(path.is_dir())
            self.assertEqual(metrics.path, str(path))
            (path / "gauge_livesum_4242.db").write_bytes(b"")
            (path / "counter_4242.db").write_bytes(b"")
            (path / "gauge_livesum_4343.db").write_bytes(b"")
            (exited,) = supervisor.workerExited
            exited(4242)
            self.assertEqual(
                sorted(p.name for p in path.iterdir()),
                ["counter_4242.db", "gauge_livesum_4343.db"],
            )
        finally:
            stopped = metrics.stopService()
        self.successResultOf(stopped)
        self.assertFalse(path.exists())
        self.assertIsNone(metrics.path)
