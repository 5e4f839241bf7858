"""
Listening that fails fast: a listener that cannot be opened (the port is
taken, the unix socket's directory is missing or not writable, permission
denied) stops start-up with one line,
C{esmtpkit: cannot listen on DESCRIPTION: REASON}, and a non-zero exit
status, instead of a logged traceback and a server that listens on nothing.

C{twistd} forks into the background before it starts the services, and
its parent then exits 0 unless the child reports an error through a pipe
(printed as twistd's own two-line message). So C{twistd esmtpkit} opens its
listeners earlier, in C{makeService} (L{openBeforeFork}), while it is still
the process started from the shell: a failure is printed on standard error
and the command exits 1, before any fork, pid file or log file; in every
mode (foreground, daemon, C{--workers}). The sockets opened then are the
ones served (their accepting starts with the service), so nothing can take
the port between a check and the real listen: there is no check.

Where twistd is to change the root or working directory first
(C{--chroot}, C{--rundir}), relative unix socket paths would mean
something else before; then the listeners open when the service starts, as
before, and a failure there still stops start-up: in the foreground with
the same line and exit status 1, in a daemon with twistd's own message
(exit status 1) and the line in the log. An endpoint that listens only
later (none of Twisted's own: a third-party endpoint plugin) fails by
logging the line at critical level and, under C{twistd}, stopping the
process with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger
from twisted.python.failure import Failure

from .startup import StartupError

__all__ = [
    "CannotListen",
    "ListenerService",
    "openBeforeFork",
    "closeNow",
    "exitOnFailure",
    "listenAll",
    "listenNow",
    "reason",
]

log = Logger(namespace="esmtpkit")


def reason(error: BaseException | str) -> str:
    """
    Why a listen failed, in a few lower-case words: C{address already in
    use}, C{no such file or directory}, C{permission denied}, ...
    """
    if isinstance(error, CannotListenError):
        error = error.socketError
        if error == "Cannot acquire lock":  # a unix socket's PATH.lock
            return "address already in use (its lock file is held)"
    if isinstance(error, OSError):
        text = error.strerror or str(error)
    else:
        text = str(error)
    text = " ".join(text.split()).rstrip(".")
    return text[:1].lower() + text[1:] if text else "unknown error"


class CannotListen(Exception):
    """
    A listener could not be opened.

    @ivar description: the port description, as given.
    @ivar error: the exception the listen failed with.
    @ivar message: C{esmtpkit: cannot listen on DESCRIPTION: REASON}.
    """

    def __init__(self, description: str, error: BaseException | str) -> None:
        self.description = description
        self.error = error
        self.message = f"esmtpkit: cannot listen on {description}: {reason(error)}"
        super().__init__(self.message)


def closeNow(port: Any) -> None:
    """
    Close a listening port at once, without the reactor running (which
    L{IListeningPort.stopListening} needs): a unix socket's file is removed,
    so that the next start does not find it in the way. Never raises.
    """
    try:
        port.stopReading()
        port.connectionLost(Failure(CONNECTION_DONE))
    except Exception:
        pass


def listenNow(
    endpoint: IStreamServerEndpoint, factory: Any, description: str
) -> IListeningPort | Deferred[IListeningPort]:
    """
    C{endpoint.listen(factory)}, for endpoints that listen at once (all of
    Twisted's stream server endpoints do: C{tcp:}, C{tcp6:}, C{unix:},
    C{ssl:}, C{systemd:}, and esmtpkit's layers over them).

    @return: the listening port, or, for an endpoint that listens later,
        the L{Deferred} of its listen.
    @raise CannotListen: the listen failed at once.
    """
    d = endpoint.listen(factory)
    outcome: list[Any] = []

    def settled(result: Any) -> Any:
        outcome.append(result)
        return result

    d.addBoth(settled)
    if not outcome:
        return d
    result = outcome[0]
    if isinstance(result, Failure):
        d.addErrback(lambda failure: None)  # handled: raised below
        raise CannotListen(description, result.value or "unknown error")
    port: IListeningPort = result
    return port


class ListenerService(Service):
    """
    Listens on one endpoint with one factory, like Twisted's
    L{StreamServerEndpointService}, but fails loudly: L{listen} (called by
    L{openBeforeFork}, L{privilegedStartService} or L{startService},
    whichever comes first) opens the socket and raises L{CannotListen} if
    it cannot; the socket accepts connections only once the service has
    started.

    @ivar port: the listening port, once open.
    @ivar exitOnFailure: for an endpoint that listens later: stop the
        process (SIGTERM) when its listen fails, instead of only logging.
    """

    exitOnFailure = False

    def __init__(
        self, endpoint: IStreamServerEndpoint, factory: Any, description: str
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.port: Any = None
        self._waiting: Deferred[Any] | None = None

    def listen(self) -> None:
        """
        Open the socket, if it is not open yet.

        @raise CannotListen: it cannot be opened.
        """
        if self.port is not None or self._waiting is not None:
            return
        result = listenNow(self.endpoint, self.factory, self.description)
        if isinstance(result, Deferred):
            self._waiting = result
            result.addCallbacks(self._listeningLater, self._failedLater)
            return
        self._opened(result)

    def _opened(self, port: Any) -> None:
        self.port = port
        if not self.running:
            self.port.stopReading()  # accept from startService on

    def _listeningLater(self, port: Any) -> None:
        if self._waiting is None:  # stopped meanwhile
            port.stopListening()
            return
        self._waiting = None
        self._opened(port)

    def _failedLater(self, failure: Failure) -> None:
        if self._waiting is None:  # cancelled by stopService
            return
        self._waiting = None
        message = CannotListen(
            self.description, failure.value or "unknown error"
        ).message
        log.critical("{message}", message=message)
        if self.exitOnFailure:
            os.kill(os.getpid(), signal.SIGTERM)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listenOrReport()
        if self.port is not None:
            claimLock(self.port)  # before twistd drops privileges

    def startService(self) -> None:
        super().startService()
        self._listenOrReport()
        if self.port is not None:
            claimLock(self.port)
            self.port.startReading()

    def _listenOrReport(self) -> None:
        try:
            self.listen()
        except CannotListen as e:
            log.critical("{message}", message=e.message)
            raise

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        port, self.port = self.port, None
        if port is not None:
            result: Deferred[None] | None = port.stopListening()
            return result
        return None

    def close(self) -> None:
        """
        Close the socket at once (start-up failed elsewhere).
        """
        port, self.port = self.port, None
        if port is not None:
            closeNow(port)


def listenAll(listeners: Iterable[ListenerService]) -> None:
    """
    L{ListenerService.listen} on each, in order; if one fails, close the
    ones opened before it and raise.

    @raise CannotListen: one of them cannot listen.
    """
    opened: list[ListenerService] = []
    try:
        for listener in listeners:
            if listener.port is None:
                listener.listen()
                opened.append(listener)
    except CannotListen:
        for listener in opened:
            listener.close()
        raise


def _installExceptHook() -> None:
    """
    Have an uncaught L{CannotListen} (a listen that failed when the service
    started: C{twistd} lets it out after cleaning up) print its one line,
    not a traceback; any other exception goes to the hook there was.
    """
    previous = sys.excepthook
    if getattr(previous, "esmtpkitListen", False):
        return

    def hook(
        kind: type[BaseException],
        value: BaseException,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(value, CannotListen):
            # twistd may have sys.stderr going to its log by now.
            print(value.message, file=sys.__stderr__ or sys.stderr)
        else:
            previous(kind, value, tb)

    hook.esmtpkitListen = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _openNow(options: Any) -> bool:
    """
    Whether the listeners may be opened now: not when twistd is to change
    the root or working directory before it starts the service.
    """
    parent = getattr(options, "parent", None)
    if parent is None or "nodaemon" not in parent:  # not twistd: twist, Python
        return True
    return parent.get("chroot") is None and parent.get("rundir", ".") == "."


def openBeforeFork(service: Any, options: Any) -> None:
    """
    Open the listeners of C{service} (an L{ESMTPService} or a
    L{WorkerSupervisor}, which have C{listen()}) now, as C{twistd esmtpkit}
    runs C{makeService}: before twistd forks into the background, writes
    its pid file or opens its log. The reactor is not running yet, so the
    sockets only start accepting when the service starts. (The umask
    twistd sets for a daemon does not matter: a unix socket gets the
    C{mode=} of its description, 666 by default, either way.)

    @raise StartupError: one of them cannot be opened (those opened before
        it are closed again).
    """
    _installExceptHook()
    exitOnFailure(service)
    if not _openNow(options):
        return
    try:
        service.listen()
    except CannotListen as e:
        raise StartupError(e.message[len("esmtpkit: ") :]) from None


def claimLock(port: Any) -> None:
    """
    Make this process the owner of a unix socket's lock file
    (C{PATH.lock}, a symbolic link to the owner's PID), if the socket was
    opened by the process twistd forked from: otherwise the lock would name
    a process that is gone, another server would take it for stale and
    remove the socket, and this one could not remove the lock when it
    stops. The link is replaced atomically (rename), so there is no moment
    without a lock.
    """
    lock = getattr(port, "lockFile", None)
    name = getattr(lock, "name", None)
    if not isinstance(name, str | bytes) or not getattr(lock, "locked", False):
        return
    path = os.fsdecode(name)
    mine = str(os.getpid())
    try:
        if os.readlink(path) == mine:
            return
        fresh = f"{path}.{mine}"
        os.symlink(mine, fresh)
        os.rename(fresh, path)
    except OSError as e:
        log.warn("unix socket lock {path} not taken over: {error}", path=path, error=e)


def exitOnFailure(service: Any) -> None:
    """
    Mark every L{ListenerService} under C{service} to stop the process if
    its listen fails once the reactor runs.
    """
    for child in getattr(service, "services", ()):
        if isinstance(child, ListenerService):
            child.exitOnFailure = True
