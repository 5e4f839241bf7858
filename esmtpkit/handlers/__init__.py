"""
Ready-made handlers.

  - L{Sink}: accepts every message and keeps nothing (benchmarks, tests).
  - L{Maildir}: delivers every message into a Maildir (the default of
    C{twistd esmtpkit}).
  - L{Relay}: forwards every transaction to an upstream SMTP or LMTP
    server, command by command (an SMTP proxy).
"""

from .maildir import Maildir
from .relay import Relay
from .sink import Sink

__all__ = ["Maildir", "Relay", "Sink"]
