"""
The log of C{--workers}: each worker writes its events as JSON lines
(C{twist --log-format json}); the supervisor reads them back into events of
its own log, with the worker's name, so every line is written once, by the
supervisor's observer (text or JSON), with one timestamp and one prefix.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from twisted.logger import LogLevel, eventFromJSON, globalLogPublisher

__all__ = ["WorkerLog", "howEnded", "keepFailureText"]

_FAILURE_TEXT = "log_failure_text"


def keepFailureText(event: dict[str, Any]) -> None:
    """
    A log observer for a worker, to add before the JSON one: the text of a
    failure's exception, which Twisted's JSON form of a failure drops, as
    a field of its own (L{WorkerLog} puts it back).
    """
    failure = event.get("log_failure")
    if failure is not None and _FAILURE_TEXT not in event:
        try:
            event[_FAILURE_TEXT] = str(failure.value)
        except Exception:
            event[_FAILURE_TEXT] = repr(failure.value)


_MAX_BUFFER = 1 << 20


def howEnded(value: Any) -> str:
    """
    How a process ended, for a person: C{killed by signal 9 (SIGKILL)},
    C{exited with status 3}.

    @param value: the C{ProcessDone} or C{ProcessTerminated} of its end.
    """
    number = getattr(value, "signal", None)
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {number} ({name})"
    status = getattr(value, "exitCode", None)
    if status is None:
        return "ended"
    return f"exited with status {status}"


class WorkerLog:
    """
    One worker's standard output and error, turned into events of this
    process's log.

    @ivar name: the worker's name (C{worker-1}), put in each event as
        C{worker} and in its system (the text log's prefix).
    """

    def __init__(self, name: str, publisher: Any = None) -> None:
        self.name = name
        self._publish = publisher if publisher is not None else globalLogPublisher
        self._buffers = {"stdout": b"", "stderr": b""}

    def outReceived(self, data: bytes) -> None:
        self._received("stdout", data)

    def errReceived(self, data: bytes) -> None:
        self._received("stderr", data)

    def flush(self) -> None:
        """
        Log what is left of a last line without its line ending.
        """
        for stream, rest in self._buffers.items():
            if rest.strip():
                self._line(stream, rest)
            self._buffers[stream] = b""

    def _received(self, stream: str, data: bytes) -> None:
        buffer = self._buffers[stream] + data
        *lines, rest = buffer.split(b"\n")
        if len(rest) > _MAX_BUFFER:  # no line ending in sight: log it as is
            lines.append(rest)
            rest = b""
        self._buffers[stream] = rest
        for line in lines:
            if line.strip():
                self._line(stream, line)

    def _line(self, stream: str, line: bytes) -> None:
        text = line.decode("utf-8", "replace").lstrip("\x1e").rstrip("\r")
        event: dict[str, Any] | None = None
        if text.startswith("{"):
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
        if not isinstance(event, dict) or "log_level" not in event:
            # Not an event: something the worker printed before its log
            # began, or a crash.
            event = {
                "log_format": "{line}",
                "line": text,
                "log_level": LogLevel.warn if stream == "stderr" else LogLevel.info,
                "log_namespace": "esmtpkit.worker",
                "log_time": time.time(),
                "stream": stream,
            }
        failure = event.get("log_failure")
        text = event.pop(_FAILURE_TEXT, None)
        if failure is not None and isinstance(text, str):
            failure.value = text  # what the traceback's last line shows
        level = event.get("log_level")
        namespace = event.get("log_namespace", "-")
        event["worker"] = self.name
        event["log_system"] = f"{self.name} {namespace}#{getattr(level, 'name', '-')}"
        self._publish(event)
