"""
C{--log-format json}: the log as one JSON object per line.

Each object has C{time} (ISO 8601, UTC), C{level}, C{namespace},
C{message} (the line the text log would show, without its timestamp and
prefix), C{traceback} for a failure, C{worker} for a line from a worker of
C{--workers}, and then every field of the event (C{session}, C{client},
C{code}, ...; see docs/logging.md); a value JSON cannot hold is written as
its text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = [
    "JSONLogObserver",
    "eventAsJSONLine",
    "twistdLogFile",
    "twistdLogObserver",
    "logWith",
    "logAsJSON",
    "FORMATS",
]

FORMATS = ("text", "json")


def eventAsJSONLine(event: LogEvent) -> str:
    """
    The JSON object of C{event}, on one line (no line ending).
    """
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z"),
        "level": getattr(level, "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:
            out["traceback"] = repr(failure)
    for key, value in event.items():
        if not key.startswith("log_") and key not in out:
            out[key] = value
    return json.dumps(out, default=str, ensure_ascii=False)


@implementer(ILogObserver)
class JSONLogObserver:
    """
    Writes each event to a file as one JSON object per line
    (L{eventAsJSONLine}).
    """

    def __init__(self, outFile: IO[str]) -> None:
        self._outFile = outFile

    def __call__(self, event: LogEvent) -> None:
        self._outFile.write(eventAsJSONLine(event) + "\n")
        self._outFile.flush()


def twistdLogFile(twistdOptions: Any) -> IO[str]:
    """
    Where C{twistd}'s own log would go with these (C{twistd}'s) options:
    standard output under C{--nodaemon} (or C{--logfile -}), else the
    C{--logfile} (C{twistd.log} by default), rotated as C{twistd} rotates
    it.

    @raise ValueError: C{--syslog}, which takes no file.
    """
    if twistdOptions.get("syslog"):
        raise ValueError("--log-format json does not go with twistd --syslog")
    name = twistdOptions.get("logfile")
    if name == "-" or (twistdOptions.get("nodaemon") and not name):
        return sys.stdout
    return LogFile.fromFullPath(name or "twistd.log")  # type: ignore[return-value]


def twistdLogObserver(twistdOptions: Any) -> JSONLogObserver:
    """
    A L{JSONLogObserver} writing where C{twistd}'s own log would go with
    these (C{twistd}'s) options (L{twistdLogFile}).

    @raise ValueError: C{--syslog}, which takes no JSON.
    """
    return JSONLogObserver(twistdLogFile(twistdOptions))


def logAsJSON(service: Any, options: Any) -> None:
    """
    Under C{twistd} (and C{python -m esmtpkit}), make the application
    C{service} joins log as JSON. (Under C{twist}, its own C{--log-format
    json} does it.)
    """
    from .startup import StartupError

    try:
        logWith(service, options, twistdLogObserver)
    except ValueError as e:
        raise StartupError(str(e)) from None


def logWith(
    service: Any, options: Any, makeObserver: Callable[[Any], ILogObserver]
) -> bool:
    """
    Under C{twistd} (and C{python -m esmtpkit}), make the application
    C{service} joins log through C{makeObserver(twistdOptions)}: twistd
    takes the application's L{ILogObserver} component when it starts
    logging.

    @return: whether it was done (not outside twistd, nor under twist).
    """
    parent = getattr(options, "parent", None)
    if parent is None or "nodaemon" not in parent:
        return False
    observer = makeObserver(parent)
    setServiceParent = service.setServiceParent

    def joined(application: Any) -> None:
        setComponent = getattr(application, "setComponent", None)
        if setComponent is not None:
            setComponent(ILogObserver, observer)
        setServiceParent(application)

    service.setServiceParent = joined  # type: ignore[method-assign]
    return True
