"""
Ready-made handlers, each selectable with C{twistd esmtpkit --handler
esmtpkit.handlers.NAME} (see docs/handlers.md, "Built-in handlers").

  - L{Sink}: accepts every message and keeps nothing (benchmarks, tests).
  - L{Maildir}: delivers every message into a Maildir as a local delivery
    agent does, applying the handler's modifications (the default of
    C{twistd esmtpkit}).
  - L{Relay}: forwards every transaction to an upstream SMTP or LMTP
    server, command by command (an SMTP proxy).
  - L{Chain}: runs several handlers in order for each hook.
  - L{Debug}: prints what the client sends, as it streams.
  - L{Message}: hands each message to C{handle_message} as an
    L{email.message.EmailMessage}.
  - L{Webhook}: posts each message to an HTTP(S) endpoint.

L{HandlerOptions} is how a handler declares its own options.
"""

from typing import Any

from .maildir import Maildir
from .options import HandlerOptions
from .sink import Sink

__all__ = [
    "Chain",
    "Debug",
    "HandlerOptions",
    "Maildir",
    "Message",
    "Relay",
    "Sink",
    "Webhook",
]

# Imported when first asked for: Webhook brings treq and twisted.web, which
# a server that does not use it should not pay for.
_LAZY = {
    "Chain": ".chain",
    "Debug": ".debug",
    "Message": ".message",
    "Relay": ".relay",
    "Webhook": ".webhook",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
