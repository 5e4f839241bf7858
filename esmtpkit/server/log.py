"""
L{LevelLogger}: the server's L{Logger}, which drops events below a level
before building them.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel

__all__ = ["LevelLogger"]

_LEVELS = list(LogLevel.iterconstants())


def _ignore(*args: object, **kwargs: object) -> None:
    pass


class LevelLogger(Logger):
    """
    A L{Logger} that drops events below a level before building them, so
    that a quiet server pays next to nothing for the events it does not
    log.

    @ivar infoEnabled: whether C{info} events are logged (to skip even
        gathering the fields of a frequent one).
    """

    def __init__(self, level: LogLevel, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.level = level
        self._lowest = _LEVELS.index(level)
        self.infoEnabled = self.enabled(LogLevel.info)
        # A level that is off costs one call that does nothing.
        for below in _LEVELS[: self._lowest]:
            setattr(self, below.name, _ignore)

    def enabled(self, level: LogLevel) -> bool:
        """
        Whether events of C{level} are logged.
        """
        return _LEVELS.index(level) >= self._lowest

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _LEVELS.index(level) >= self._lowest:
            super().emit(level, format, **kwargs)
