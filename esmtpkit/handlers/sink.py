"""
L{Sink}: a handler that accepts everything and keeps nothing.
"""

from __future__ import annotations

from ..handler import ESMTPHandler

__all__ = ["Sink"]


class Sink(ESMTPHandler):
    """
    Accepts every sender, recipient and message, and throws the message
    away. For benchmarks and tests; the default replies of
    L{ESMTPHandler} are all it needs.
    """

    __slots__ = ()
