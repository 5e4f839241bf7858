"""
A real esmtpkit server for tests that talk to it over a socket (smtplib,
swaks, an MTA): L{LiveServer}.

    with LiveServer(MyHandler) as server:
        with smtplib.SMTP(*server.address) as client:
            client.sendmail("a@example.org", ["b@example.org"], message)
        assert server.deliveries[0].recipients == ["b@example.org"]

The server listens on a port of the loopback that the system picks (port
0; the port is read back from the listening socket, so no other process can
take it between the choice and the bind), and runs on a reactor of its own
in a background thread (L{ReactorThread}), so that it serves while a plain,
synchronous test blocks in its client. The C{esmtpkit_server} fixture of the
pytest plugin (L{esmtpkit.pytest_plugin}) starts and stops these for you.
"""

from __future__ import annotations

import atexit
import email.policy
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure

from .core.events import ServerObserver
from .handlers import Maildir
from .server.listeners import ListenerService
from .server.service import ESMTPService
from .threads import reactorRunner, runningWith

__all__ = ["LiveServer", "ReactorThread", "Delivery", "KINDS"]

KINDS: dict[str, str] = {"smtp": "", "lmtp": "lmtp:"}
"""
The faces a L{LiveServer} can show, and the prefix of their listener's
description (a new face, such as C{"milter": "milter:"}, is one entry).
"""

LOOPBACK = "127.0.0.1"


def _newReactor() -> Any:
    try:
        from twisted.internet.epollreactor import EPollReactor

        return EPollReactor()
    except ImportError:  # not Linux
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()


class ReactorThread:
    """
    A reactor of its own (never the global one, which the test process may
    use otherwise, with trial), running in a daemon thread. The work it
    runs with L{esmtpkit.threads.deferToThread} goes to this reactor's
    thread pool.

    @ivar reactor: the reactor.
    """

    _shared: ReactorThread | None = None
    _sharedLock = threading.Lock()

    def __init__(self) -> None:
        self.reactor = _newReactor()
        self._thread = threading.Thread(
            target=self._run, name="esmtpkit-live-server", daemon=True
        )
        self._thread.start()

    @classmethod
    def shared(cls) -> ReactorThread:
        """
        The reactor thread the live servers of this process share (started
        on first use, stopped when the interpreter exits).
        """
        with cls._sharedLock:
            if cls._shared is None or not cls._shared._thread.is_alive():
                cls._shared = cls()
                atexit.register(cls._shared.stop)
            return cls._shared

    def _run(self) -> None:
        with runningWith(reactorRunner(self.reactor)):
            self.reactor.run(installSignalHandlers=False)

    def call(self, f: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """
        Run C{f(*args)} in the reactor thread and wait, at most C{timeout}
        seconds, for its result (the result of its Deferred, if it returns
        one).

        @raise TimeoutError: no result in time.
        @raise Exception: what C{f} raised, or its Deferred failed with.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("ReactorThread.call from its own thread")
        future: Future[Any] = Future()

        def failed(failure: Failure) -> None:
            future.set_exception(failure.value)

        def run() -> None:
            maybeDeferred(f, *args).addCallbacks(future.set_result, failed)

        self.reactor.callFromThread(run)
        return future.result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """
        Stop the reactor and wait for its thread to end.
        """
        if self._thread.is_alive():
            self.reactor.callFromThread(self.reactor.stop)
            self._thread.join(timeout)


@dataclass
class Delivery:
    """
    A transaction that ended with an end of message, as the server saw it.

    @ivar sender: the reverse-path (C{""} for a null sender).
    @ivar recipients: the accepted recipients' addresses, in order.
    @ivar outcome: C{"accepted"}, C{"partial"} (some LMTP recipients) or
        C{"refused"}.
    @ivar codes: the reply code each recipient got.
    """

    sender: str
    recipients: list[str]
    outcome: str
    codes: list[int] = field(default_factory=list)


class _Recorder(ServerObserver):
    def __init__(self, server: LiveServer) -> None:
        self._server = server

    def transactionEnded(
        self, session: Any, transaction: Any, outcome: str, replies: Any
    ) -> None:
        if outcome == "aborted":
            return
        self._server.deliveries.append(
            Delivery(
                transaction.sender,
                [str(r) for r in transaction.recipients],
                outcome,
                [r.code for r in replies],
            )
        )

    def hookFailed(self, session: Any, hook: str, failure: Failure) -> None:
        self._server.failures.append(failure)

    def handlerFailed(self, session: Any, failure: Failure) -> None:
        self._server.failures.append(failure)


class LiveServer:
    """
    A real esmtpkit server (an L{ESMTPService}) on C{127.0.0.1}, on a port
    the system picked.

    @ivar host: C{"127.0.0.1"}.
    @ivar port: the port it listens on (once started).
    @ivar kind: the face it shows: C{"smtp"} or C{"lmtp"} (L{KINDS}).
    @ivar maildir: the Maildir folder of a L{Maildir} handler (the
        default), or L{None} for other handlers.
    @ivar handlers: every handler the server has built, one per connection,
        in order: what a handler of your own recorded is there.
    @ivar deliveries: a L{Delivery} for each transaction that reached its
        end of message, in order.
    @ivar failures: the L{Failure}s of hooks that raised (the client got
        a 4xx), for a test to assert there are none.
    @ivar reactor: the reactor the server runs on (in another thread: use
        C{reactorThread.call} to run code there).
    """

    def __init__(
        self,
        handler: Callable[..., Any] | None = None,
        *,
        kind: str = "smtp",
        maildir: str | Path | None = None,
        reactorThread: ReactorThread | None = None,
        **settings: Any,
    ) -> None:
        """
        @param handler: a handler class or a factory of handlers (called
            with no arguments, once per connection). L{None}, L{Maildir} or
            a subclass of it is built with C{maildir} as its folder.
        @param kind: C{"smtp"} (the default) or C{"lmtp"}.
        @param maildir: the Maildir folder (required for a Maildir handler).
        @param reactorThread: where to run; L{ReactorThread.shared} by
            default.
        @param settings: L{esmtpkit.Settings} fields (C{maxMessageSize=1000},
            ...); the host name defaults to C{mx.example.test}, the shutdown
            timeout to 5 seconds.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
        self.kind = kind
        self.host = LOOPBACK
        self.port = 0
        self.handlers: list[Any] = []
        self.deliveries: list[Delivery] = []
        self.failures: list[Failure] = []
        self.maildir: Path | None = None
        if handler is None:
            handler = Maildir
        if isinstance(handler, type) and issubclass(handler, Maildir):
            if maildir is None:
                raise TypeError("a Maildir handler needs maildir=")
            self.maildir = Path(maildir)
            folder, cls = str(self.maildir), handler
            handler = lambda: cls(folder)  # noqa: E731
        self._factory = handler
        self._thread = reactorThread or ReactorThread.shared()
        self.reactor = self._thread.reactor
        self.reactorThread = self._thread
        settings.setdefault("hostname", "mx.example.test")
        settings.setdefault("shutdownTimeout", 5)
        self._settings = settings
        self._service: ESMTPService | None = None

    @property
    def address(self) -> tuple[str, int]:
        """
        C{(host, port)}, as C{smtplib.SMTP(*address)} takes them.
        """
        return (self.host, self.port)

    def _build(self) -> Any:
        handler = self._factory()
        self.handlers.append(handler)
        return handler

    def start(self) -> LiveServer:
        """
        Listen and serve; return once the socket is open.

        @raise esmtpkit.server.listeners.CannotListen: it cannot be opened.
        """

        def start() -> int:
            description = f"{KINDS[self.kind]}tcp:0:interface={LOOPBACK}"
            service = ESMTPService(
                self._build,
                [description],
                reactor=self.reactor,
                observers=[_Recorder(self)],
                **self._settings,
            )
            service.listen()
            service.startService()
            self._service = service
            [listener] = [s for s in service if isinstance(s, ListenerService)]
            return int(listener.port.getHost().port)

        self.port = self._thread.call(start)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """
        Stop listening and drain the connections (L{ESMTPService.stopService});
        return once that is over.
        """
        service, self._service = self._service, None
        if service is not None:
            self._thread.call(service.stopService, timeout=timeout)

    def messages(self) -> list[EmailMessage]:
        """
        The messages in the Maildir's C{new/}, parsed (policy
        C{email.policy.default}, line endings as C{"\\n"}), in the order
        their transactions began.

        @raise TypeError: the handler is not a Maildir.
        """
        if self.maildir is None:
            raise TypeError(
                "messages() reads a Maildir; this server's handler is not one"
            )
        folder = self.maildir / "new"
        files = sorted(folder.iterdir(), key=_deliveryOrder) if folder.is_dir() else []
        parser = BytesParser(policy=email.policy.default)
        # CRLF to LF first: the email package's own line ending.
        return [
            parser.parsebytes(p.read_bytes().replace(b"\r\n", b"\n"))  # type: ignore[misc]
            for p in files
        ]

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self,
        excType: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _deliveryOrder(path: Path) -> tuple[int, ...]:
    # Maildir names start "<seconds>.M<microseconds>P<pid>Q<counter>".
    numbers = re.match(r"(\d+)\.M(\d+)P(\d+)Q(\d+)", path.name)
    if numbers is None:
        return (path.stat().st_mtime_ns,)
    return tuple(int(n) for n in numbers.groups())
