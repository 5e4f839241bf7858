"""
The text log, written as C{twistd} writes it, for less.

C{twistd}'s own observer formats every event the general way: the format
string parsed field by field, the timestamp made anew, the prefix worked
out from the namespace and level. esmtpkit's lines (the events of
L{esmtpkit.core.eventlog.LogObserver}, which carry their text ready to
format in a C{log_line} field) are written by L{TextLogObserver} with a
timestamp made once a second and a prefix made once per namespace and
level: the same bytes as C{twistd}'s, at a fraction of the cost. Every
other event goes the general way.
"""

from __future__ import annotations

import time
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import implementer

__all__ = ["TextLogObserver", "logAsText"]


@implementer(ILogObserver)
class TextLogObserver:
    """
    Writes each event to a text file in C{twistd}'s format
    (C{TIMESTAMP [namespace#level] text}, continuation lines indented with
    a tab), flushing after each; the finished lines of L{writeLine} are
    held and written at once, with one write and one flush, at the end of
    the reactor turn that made them, whatever the file's own buffering (a
    process killed with SIGKILL loses at most that turn's lines; the
    reactor's shutdown writes what is held).
    """

    def __init__(self, outFile: IO[str], reactor: Any = None) -> None:
        """
        @param reactor: what runs the flush at the end of a reactor turn
            (L{IReactorTime}); the global reactor by default.
        """
        self._outFile = outFile
        self._reactor = reactor
        self._second: int | None = None
        self._stamp = ""
        self._prefixes: dict[tuple[Any, Any], str] = {}
        self._flushing = False
        self._held: list[str] = []
        self._atShutdown = False
        self._lastNamespace: Any = None
        self._lastLevel: Any = None
        self._head = ""

    def __call__(self, event: LogEvent) -> None:
        line = event.get("log_line")
        when = event.get("log_time")
        if (
            line is None
            or when is None
            or "log_failure" in event
            or "log_system" in event
        ):
            text = formatEventAsClassicLogText(event)
            if text is None:
                return
        else:
            try:
                message = str(line)
            except Exception:
                text = formatEventAsClassicLogText(event)
                if text is None:
                    return
            else:
                if not message:
                    return  # as twistd: an empty event writes nothing
                text = self._text(
                    event.get("log_namespace", "-"),
                    event.get("log_level"),
                    when,
                    message,
                )
        if self._held:
            self._writeHeld()
        self._outFile.write(text)
        self._outFile.flush()

    def writeLine(self, namespace: str | None, level: LogLevel, message: str) -> None:
        """
        Write C{message}, a finished line of text, as the event of
        C{namespace} and C{level} logged now would be written (the fast
        lane of L{esmtpkit.core.eventlog.LogObserver}).
        """
        if not message:
            return
        when = time.time()
        if (
            namespace is self._lastNamespace
            and level is self._lastLevel
            and int(when) == self._second
            and "\n" not in message
        ):
            # _text, inline, for the same namespace, level and second.
            self._held.append(f"{self._head}{message}\n")
        else:
            self._held.append(self._text(namespace, level, when, message))
        if not self._flushing:
            reactor = self._reactor
            if reactor is None:
                from twisted.internet import reactor as default

                reactor = self._reactor = default
            if not self._atShutdown:
                # The last turn's lines (the drain's) are written too.
                self._atShutdown = True
                trigger = getattr(reactor, "addSystemEventTrigger", None)
                if trigger is not None:
                    trigger("after", "shutdown", self._flush)
            self._flushing = True
            reactor.callLater(0, self._flush)

    def _writeHeld(self) -> None:
        text = "".join(self._held)
        self._held.clear()
        self._outFile.write(text)

    def _flush(self) -> None:
        self._flushing = False
        if self._held:
            self._writeHeld()
            self._outFile.flush()

    def _text(self, namespace: Any, level: Any, when: float, message: str) -> str:
        second = int(when)
        if second != self._second:
            # twistd's timestamps have whole seconds: one per second.
            self._stamp = formatTime(when)
            self._second = second
        key = (namespace, level)
        prefix = self._prefixes.get(key)
        if prefix is None:
            name = "-" if level is None else level.name
            prefix = self._prefixes[key] = f" [{namespace}#{name}] "
            if len(self._prefixes) > 64:
                self._prefixes.clear()
        # What writeLine's next line of this namespace and level, in this
        # second, starts with.
        self._lastNamespace, self._lastLevel = namespace, level
        self._head = self._stamp + prefix
        if "\n" in message:
            message = message.replace("\n", "\n\t")
        return f"{self._head}{message}\n"


def logAsText(service: Any, options: Any) -> None:
    """
    Under C{twistd} (and C{python -m esmtpkit}), make the application
    C{service} joins log through a L{TextLogObserver} where twistd's own
    observer would write (with C{--syslog}, twistd's own stays).
    """
    from .jsonlog import logWith, twistdLogFile

    parent = getattr(options, "parent", None)
    if parent is None or parent.get("syslog"):
        return
    logWith(service, options, lambda p: TextLogObserver(twistdLogFile(p)))
