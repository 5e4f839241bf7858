"""
C{twistd esmtpkit}: command-line options and the service they describe.
"""

from __future__ import annotations

import getopt
import signal
import sys
from typing import Any

from twisted.application.service import IService
from twisted.cred import strcred
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.python import usage

from ..security.auth import makePortal
from ..security.scram import IScramSHA256Credentials, ScramFileChecker
from ..security.tls import ServerTLS, TLSConfigurationError
from ..settings import Settings
from .jsonlog import FORMATS, logAsJSON
from .listeners import openBeforeFork
from .milteroptions import MilterOptionsMixin
from .optionvalues import EXTENSIONS, OPTION_OF, SETTINGS, asBytes
from .service import DEFAULT_PORT, ESMTPService
from .textlog import logAsText
from .workers import WorkerSupervisor, cores, listeningDescription

__all__ = ["Options", "makeService"]

DEFAULT_HANDLER = "esmtpkit.handlers.Maildir"


class Options(usage.Options, strcred.AuthOptionMixin, MilterOptionsMixin):
    """
    Options of C{twistd esmtpkit}.
    """

    synopsis = "[options]"
    longdesc = (
        "A programmable ESMTP server. With no options it listens on "
        f"{DEFAULT_PORT} and delivers every message into ./Maildir. "
        "--handler names a class (or any callable) providing "
        "esmtpkit.IESMTPHandler; one instance serves each connection."
    )

    optParameters = [
        [
            "tls-cert",
            None,
            None,
            "PEM file with the certificate (then any chain) for STARTTLS and "
            "ssl: listeners.",
        ],
        ["tls-key", None, None, "PEM file with the private key [default: --tls-cert]."],
        ["tls-min-version", None, "1.2", "Lowest TLS version: 1.2 or 1.3."],
        [
            "tls-client-ca",
            None,
            None,
            "PEM file of CAs; clients may present a certificate signed by one "
            "(verified, then shown to the handler).",
        ],
        [
            "handler",
            None,
            DEFAULT_HANDLER,
            "Dotted name of the handler class or factory; several, "
            "comma-separated, make a chain (esmtpkit.handlers.Chain). With "
            "--help: the handler's own options too.",
        ],
        [
            "maildir",
            None,
            "Maildir",
            "Maildir folder of the Maildir handler (created if missing).",
        ],
        [
            "metrics",
            None,
            None,
            "Endpoint to serve Prometheus metrics on, at /metrics "
            "(tcp:9101:interface=127.0.0.1).",
        ],
        [
            "log-format",
            None,
            "text",
            "Log lines as text or json (one JSON object per line; under "
            "twistd, to its log file or standard output).",
        ],
    ] + [[option, None, default, text] for option, _, _, default, text in SETTINGS]

    optFlags = [
        [
            "no-enforce-sync",
            None,
            "Do not disconnect clients that talk before the greeting or pipeline "
            "without PIPELINING (554 5.5.0).",
        ],
        [
            "require-tls",
            None,
            "Refuse MAIL and AUTH (530 5.7.0) until the client has started TLS.",
        ],
        [
            "allow-insecure-auth",
            None,
            "Offer and accept AUTH without TLS (credentials in the clear).",
        ],
        [
            "require-auth",
            None,
            "Refuse MAIL (530 5.7.0) until the client has authenticated.",
        ],
    ]

    supportedInterfaces = (
        IUsernamePassword,
        IUsernameHashedPassword,
        IScramSHA256Credentials,
    )

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []
        self["disabled-extensions"] = []
        self["inherited"] = []
        self["handler-options"] = []
        self["workers"] = 1
        self["milters"] = []
        self._arguments: list[str] = []

    def opt_help(self) -> None:
        from ..handlers.options import handlerHelp

        # --help may come before --handler: find the handler in effect.
        handler = DEFAULT_HANDLER
        arguments = self._arguments
        for index, argument in enumerate(arguments):
            if argument == "--handler" and index + 1 < len(arguments):
                handler = arguments[index + 1]
            elif argument.startswith("--handler="):
                handler = argument[len("--handler=") :]
        print(str(self) + "\n" + handlerHelp(handler))
        sys.exit(0)

    opt_help.__doc__ = usage.Options.opt_help.__doc__
    opt_h = opt_help

    def opt_handler_option(self, pair: str) -> None:
        self["handler-options"].append(pair)

    opt_handler_option.__doc__ = (
        "KEY=VALUE (or KEY, for a flag): an option of the handler, repeatable; "
        "in a chain, NAME.KEY=VALUE for the handler NAME (or its position). "
        "--handler NAME --help lists them."
    )

    def parseOptions(self, options: list[str] | None = None) -> None:
        self._arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_workers(self, count: str) -> None:
        if count == "auto":
            self["workers"] = cores()
        elif count.isdigit() and int(count) >= 1:
            self["workers"] = int(count)
        else:
            raise usage.UsageError(f"--workers: {count!r} is not a number or auto")

    opt_workers.__doc__ = (
        "Run this many worker processes sharing the listening sockets "
        "(auto: one per core) [default: 1]."
    )

    def opt_inherited_port(self, value: str) -> None:
        fd, colon, description = value.partition(":")
        if not colon or not fd.isdigit() or not description:
            raise usage.UsageError(f"--inherited-port: {value!r} is not FD:DESCRIPTION")
        self["inherited"].append((int(fd), description))
        # A worker: the supervisor may pass SIGHUP on before the service is
        # up to take it; until then, ignore it rather than die.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    opt_inherited_port.__doc__ = (
        "(Internal, used by --workers) Serve on the listening socket with this "
        "file descriptor: FD:DESCRIPTION."
    )

    def workerArguments(self) -> list[str]:
        """
        These options as a worker of C{--workers} gets them: all but
        C{--workers} and C{--port} (the workers inherit the sockets).
        """
        pairs, rest = getopt.getopt(self._arguments, self.shortOpt, self.longOpt)
        arguments = []
        for option, value in pairs:
            if option in ("--workers", "--port", "-p", "--lmtp", "--inherited-port"):
                continue
            if option.startswith("--"):
                takesValue = option[2:] + "=" in self.longOpt
                arguments.append(f"{option}={value}" if takesValue else option)
            else:
                takesValue = option[1:] + ":" in self.shortOpt
                arguments += [option, value] if takesValue else [option]
        return arguments + rest

    def opt_port(self, description: str) -> None:
        self["ports"].append(description)

    # usage.Options shows a method's docstring as its help, spaces and all.
    opt_port.__doc__ = (
        "Endpoint to listen on (tcp:, ssl:, unix:, haproxy:...; lmtp:DESC for "
        "LMTP, milter:DESC to serve the handler as a milter), repeatable "
        f"[default: {DEFAULT_PORT}]."
    )

    opt_p = opt_port

    def opt_lmtp(self, description: str) -> None:
        self["ports"].append("lmtp:" + description)

    opt_lmtp.__doc__ = (
        "Endpoint to serve LMTP (RFC 2033) on instead of SMTP, repeatable: "
        "the same as --port lmtp:DESC (unix:/path, tcp:PORT:interface=...). "
        "Without --port, no SMTP listener is opened."
    )

    def opt_disable_extension(self, keyword: str) -> None:
        name = keyword.upper()
        if name not in EXTENSIONS:
            raise usage.UsageError(
                f"--disable-extension: {keyword!r} is not one of "
                + ", ".join(EXTENSIONS)
            )
        self["disabled-extensions"].append(name)

    opt_disable_extension.__doc__ = (
        "Do not offer this EHLO extension, repeatable: " + ", ".join(EXTENSIONS) + "."
    )

    def opt_auth(self, description: str) -> None:
        if description.startswith("scram-file:"):
            try:
                self.addChecker(ScramFileChecker(description[len("scram-file:") :]))
            except ValueError as e:
                raise usage.UsageError(f"--auth {description}: {e}") from None
            return
        try:
            super().opt_auth(description)
        except Exception as e:
            raise usage.UsageError(f"--auth {description}: {e}") from None
        checker = self["credCheckers"][-1]
        if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
            # strcred's memory: checker keeps text, but SASL gives bytes.
            checker.users = {
                asBytes(user): asBytes(password)
                for user, password in checker.users.items()
            }

    opt_auth.__doc__ = (
        "Check AUTH credentials with this twisted.cred checker, repeatable: "
        "file:PATH, memory:USER:PASS, unix, ... (see --help-auth), or "
        "scram-file:PATH (SCRAM-SHA-256 verifiers; make lines with "
        "python -m esmtpkit scram USER)."
    )

    def postOptions(self) -> None:
        if not self["ports"] and not self["inherited"]:
            self["ports"] = [DEFAULT_PORT]
        self["settings"] = self._settings()
        self["tls"] = self._tls()
        checkers = self.get("credCheckers") or []
        self["portal"] = makePortal(checkers) if checkers else None
        if self["require-auth"] and self["portal"] is None:
            raise usage.UsageError("--require-auth needs --auth")
        self["handlerFactory"] = self._handlerFactory()
        if self["milters"]:
            self["handlerFactory"] = self._withMilters(self["handlerFactory"])
        self._checkPorts()
        if self["log-format"] not in FORMATS:
            raise usage.UsageError(
                f"--log-format: {self['log-format']!r} is not text or json"
            )
        if self["metrics"] is not None:
            from . import metrics  # prometheus_client and twisted.web: only when asked

            try:
                metrics.checkEndpoint(self["metrics"])
            except ValueError as e:
                raise usage.UsageError(f"--metrics {self['metrics']}: {e}") from None

    def _tls(self) -> ServerTLS | None:
        if self["tls-cert"] is None:
            for option in ("tls-key", "tls-client-ca"):
                if self[option] is not None:
                    raise usage.UsageError(f"--{option} needs --tls-cert")
            if self["require-tls"]:
                raise usage.UsageError("--require-tls needs --tls-cert")
            return None
        try:
            return ServerTLS(
                self["tls-cert"],
                self["tls-key"],
                str(self["tls-min-version"]),
                self["tls-client-ca"],
            )
        except TLSConfigurationError as e:
            raise usage.UsageError(f"--tls-cert/--tls-key: {e}") from None

    def _settings(self) -> Settings:
        values: dict[str, Any] = {}
        for option, name, parse, _, _ in SETTINGS:
            if self[option] is None:
                continue
            try:
                values[name] = parse(str(self[option]))
            except ValueError as e:
                raise usage.UsageError(f"--{option}: {e}") from None
        for keyword in self["disabled-extensions"]:
            values[EXTENSIONS[keyword]] = False
        values["enforceSync"] = not self["no-enforce-sync"]
        values["requireTLS"] = bool(self["require-tls"])
        values["allowInsecureAuth"] = bool(self["allow-insecure-auth"])
        values["requireAuth"] = bool(self["require-auth"])
        try:
            return Settings(**values)
        except ValueError as e:
            name, _, problem = str(e).partition(": ")
            raise usage.UsageError(
                f"--{OPTION_OF.get(name, name)}: {problem}"
            ) from None

    def _handlerFactory(self) -> Any:
        # Problems with the handler are StartupErrors: one line, no usage.
        from ..handlers.options import handlerFactory

        return handlerFactory(self["handler"], self["handler-options"], self)

    def _checkPorts(self) -> None:
        from twisted.internet import reactor

        from .endpoints import serverFromDescription, splitWire, wrapFactory

        for description in self["ports"]:
            endpoint = splitWire(description)[1]
            try:
                if self["workers"] > 1:
                    serverFromDescription(
                        reactor, listeningDescription(endpoint), self["tls"]
                    )
                    wrapFactory(endpoint, object(), self["tls"])
                else:
                    serverFromDescription(reactor, endpoint, self["tls"])
            except Exception as e:
                raise usage.UsageError(
                    f"--port {description}: {type(e).__name__}: {e}"
                ) from None


def raiseFileLimit(resourceModule: Any = None, ceiling: int = 65536) -> int:
    """
    Raise this process's soft limit of open files up to its hard limit (at
    most C{ceiling}): every connection is a file descriptor, and the usual
    soft limit of 1024 would stop the server near its default
    C{--max-connections}.

    @return: the soft limit now in force.
    """
    if resourceModule is None:
        try:
            import resource as resourceModule
        except ImportError:  # not Unix
            return 0
    soft, hard = resourceModule.getrlimit(resourceModule.RLIMIT_NOFILE)
    wanted = ceiling if hard == resourceModule.RLIM_INFINITY else min(hard, ceiling)
    if soft != resourceModule.RLIM_INFINITY and soft < wanted:
        try:
            resourceModule.setrlimit(resourceModule.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return int(soft)


def makeService(options: Options) -> IService:
    """
    The service that C{twistd esmtpkit} runs.
    """
    raiseFileLimit()
    service = _makeService(options)
    if options["log-format"] == "json":
        logAsJSON(service, options)
    else:
        logAsText(service, options)
    return service


def _makeService(options: Options) -> IService:
    service: IService
    if options["workers"] > 1:
        supervisor = WorkerSupervisor(
            options["workers"],
            options["ports"],
            options.workerArguments(),
            shutdownTimeout=options["settings"].shutdownTimeout,
        )
        supervised: Any = supervisor
        if options["metrics"] is not None:
            from . import metrics

            supervised = metrics.SupervisedMetrics(supervisor, options["metrics"])
        # Listen now, before twistd forks: a port that cannot be opened
        # stops start-up with one line (esmtpkit.server.listeners).
        openBeforeFork(supervised, options)
        return supervised  # type: ignore[no-any-return]
    if options["inherited"]:
        # A worker of --workers: its log goes to the supervisor as JSON.
        from twisted.logger import globalLogPublisher

        from .workerlog import keepFailureText

        globalLogPublisher.addObserver(keepFailureText)
    service = ESMTPService(
        options["handlerFactory"],
        options["ports"],
        options["settings"],
        tls=options["tls"],
        portal=options["portal"],
        inherited=options["inherited"],
        handleSIGTERM=True,
    )
    if options["metrics"] is not None:
        from . import metrics

        metrics.serveMetrics(service, options["metrics"], bool(options["inherited"]))
    openBeforeFork(service, options)
    return service
