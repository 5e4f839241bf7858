"""
The C{--milter} options of C{twistd esmtpkit}: the milters asked in front of
the handler (L{esmtpkit.milter.front.withMilters}), their timeouts and
default action, and the C{--hook-timeout} they need.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.python import usage

from .optionvalues import SETTINGS

__all__ = ["MilterOptionsMixin"]

# With --milter and the default --hook-timeout, a hook may take this much
# longer than the longest milter timeout (the handler's own part).
_MILTER_MARGIN = 30.0


class MilterOptionsMixin:
    """
    The C{--milter*} options, for a L{usage.Options} subclass (with
    C{self["milters"]} a list, C{self["settings"]} the L{Settings
    <esmtpkit.Settings>} made before L{_withMilters} is called).
    """

    _HOOK_TIMEOUT_DEFAULT = next(o[3] for o in SETTINGS if o[0] == "hook-timeout")

    optParameters = [
        [
            "milter-default-action",
            None,
            "tempfail",
            "What to answer when a --milter is down, times out or breaks the "
            "protocol: tempfail (451 4.7.1), accept (go on without it) or "
            "reject (550 5.7.1).",
        ],
        ["milter-connect-timeout", None, "30", "Seconds to connect to a --milter."],
        [
            "milter-command-timeout",
            None,
            "30",
            "Seconds a --milter may take to answer a command (progress reports "
            "restart it).",
        ],
        [
            "milter-content-timeout",
            None,
            "300",
            "Seconds a --milter may take to answer headers, body and the end "
            "of the message.",
        ],
    ]

    def opt_milter(self, description: str) -> None:
        options: Any = self
        options["milters"].append(description)

    opt_milter.__doc__ = (
        "Ask this milter about every session, in front of the handler, "
        "repeatable, in order (like Postfix's smtpd_milters): inet:HOST:PORT, "
        "unix:PATH, or a Twisted client endpoint."
    )

    def _withMilters(self, handlerFactory: Any) -> Any:
        """
        C{handlerFactory} behind the C{--milter}s, as C{--milter*} describe
        them.

        @raise usage.UsageError: a timeout or milter description is wrong.
        """
        from ..milter.connector import MilterConnector
        from ..milter.front import withMilters

        options: Any = self
        timeouts = []
        for kind in ("connect", "command", "content"):
            option = f"milter-{kind}-timeout"
            try:
                timeouts.append(float(options[option]))
            except ValueError:
                raise usage.UsageError(
                    f"--{option}: {options[option]!r} is not a number"
                ) from None
        connectors = []
        for description in options["milters"]:
            try:
                connectors.append(
                    MilterConnector(
                        description,
                        connectTimeout=timeouts[0],
                        commandTimeout=timeouts[1],
                        contentTimeout=timeouts[2],
                        defaultAction=options["milter-default-action"],
                    )
                )
            except ValueError as e:
                raise usage.UsageError(f"--milter {description}: {e}") from None
        self._hookTimeoutForMilters(max(timeouts[1:]))
        return withMilters(connectors, handlerFactory)

    def _hookTimeoutForMilters(self, longest: float) -> None:
        # A hook asks the milters before the handler: it must be allowed
        # longer than a milter may take, or the milter timeouts never apply.
        options: Any = self
        settings = options["settings"]
        if not settings.hookTimeout or settings.hookTimeout > longest:
            return
        if options["hook-timeout"] != self._HOOK_TIMEOUT_DEFAULT:
            raise usage.UsageError(
                f"--hook-timeout {options['hook-timeout']} is not longer than the "
                f"milter timeouts ({longest:g} s): raise it, or lower "
                "--milter-content-timeout/--milter-command-timeout"
            )
        hookTimeout = longest + _MILTER_MARGIN
        options["settings"] = dataclasses.replace(settings, hookTimeout=hookTimeout)
