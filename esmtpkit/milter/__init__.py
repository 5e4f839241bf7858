"""
The Sendmail milter protocol, both ways: L{wire} (packets and constants),
the milter server face (any handler as a milter inside Postfix or Sendmail)
and the milter client (existing milters called from esmtpkit).
"""

from typing import Any

# The milter client's building blocks, imported when first asked for (the
# wire codec alone must not pull in the handler machinery).
_CLIENT = {
    "MilterClient": "client",
    "MilterConnector": "connector",
    "MilterFilter": "filter",
    "withMilters": "front",
}


def __getattr__(name: str) -> Any:
    module = _CLIENT.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
