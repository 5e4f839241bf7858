"""
The L{Relay} handler: an SMTP proxy that forwards each transaction to an
upstream SMTP or LMTP server as the client sends it, with
L{SMTPClient <esmtpkit.handlers.relay.client.SMTPClient>}, a client that
issues one command at a time.
"""

from .client import SMTPClient
from .handler import Relay
from .upstream import UpstreamConfig

__all__ = ["Relay", "SMTPClient", "UpstreamConfig"]
