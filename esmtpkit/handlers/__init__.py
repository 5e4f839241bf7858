"""
Ready-made handlers.

  - L{Sink}: accepts every message and keeps nothing (benchmarks, tests).
  - L{Maildir}: delivers every message into a Maildir as a local delivery
    agent does, applying the handler's modifications (the default of
    C{twistd esmtpkit}).
"""

from .maildir import Maildir
from .sink import Sink

__all__ = ["Maildir", "Sink"]
