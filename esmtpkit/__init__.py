"""
esmtpkit: a framework for writing SMTP/ESMTP servers on Twisted.

Write one class implementing L{IESMTPHandler} (usually by subclassing
L{ESMTPHandler}); esmtpkit calls its hooks as each SMTP conversation goes.
Run it with C{twistd -n esmtpkit --handler mod.Class}, or from Twisted code
with L{ESMTPFactory} or L{ESMTPService}.
"""

from .core.events import ServerEvents, ServerObserver
from .core.modifications import Modifications
from .core.results import PerRecipient
from .core.rewrite import ModifiedMessage
from .handler import NO_OPINION, ESMTPHandler
from .interfaces import IESMTPHandler
from .received import receivedHeader
from .reply import Reply, ReplyError
from .server.factory import ESMTPFactory, LMTPFactory
from .server.service import ESMTPService
from .session import Recipient, Session, TLSInfo, Transaction
from .settings import Settings
from .smtp.lmtp import LMTPProtocol
from .smtp.protocol import ESMTPProtocol

__version__ = "0.1.0"

__all__ = [
    "ESMTPFactory",
    "ESMTPHandler",
    "ESMTPProtocol",
    "ESMTPService",
    "IESMTPHandler",
    "LMTPFactory",
    "LMTPProtocol",
    "Modifications",
    "ModifiedMessage",
    "NO_OPINION",
    "PerRecipient",
    "Recipient",
    "Reply",
    "ReplyError",
    "Session",
    "ServerEvents",
    "ServerObserver",
    "Settings",
    "TLSInfo",
    "Transaction",
    "receivedHeader",
]
