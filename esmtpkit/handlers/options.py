"""
Handler options: how a handler class declares its own settings, and how
C{twistd esmtpkit --handler X --handler-option key=value} turns them into a
handler factory.

A handler class says C{Options = MyOptions}, a L{HandlerOptions} subclass
with C{optParameters} and C{optFlags} as in any
L{twisted.python.usage.Options}:

    class ArchiveOptions(HandlerOptions):
        optParameters = [
            ["folder", None, "archive", "Where to keep messages."],
            ["max-age", None, 30, "Days to keep them.", positiveInt],
        ]
        optFlags = [["compress", None, "Compress each message."]]

    class Archive(ESMTPHandler):
        Options = ArchiveOptions

        def __init__(self, folder="archive", maxAge=30, compress=False): ...

Each C{--handler-option key=value} (or C{key} alone, for a flag) becomes
C{--key=value} (C{--key}) for those options; the factory is then
C{lambda: Archive(**options.keywords())} -- the long names camelCased
(C{max-age} is C{maxAge}) -- unless the class has a classmethod
C{fromHandlerOptions(options)} that returns a factory itself (to check or
build things once, so that a bad value fails at start-up).
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.python import usage
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyClass

from ..interfaces import IESMTPHandler
from ..server.startup import StartupError, resolveName

__all__ = [
    "HandlerOptions",
    "camelCase",
    "positiveInt",
    "positiveFloat",
    "handlerFactory",
    "handlerHelp",
    "splitHandlerNames",
]

HandlerFactory = Callable[[], Any]


def camelCase(name: str) -> str:
    """
    C{tls-mode} as a Python keyword: C{tlsMode}.
    """
    first, *rest = name.split("-")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def positiveInt(value: str) -> int:
    """
    A coerce function for whole numbers of at least 1.
    """
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"{value!r} is not at least 1")
    return number


positiveInt.coerceDoc = "A whole number, at least 1."  # type: ignore[attr-defined]


def positiveFloat(value: str) -> float:
    """
    A coerce function for numbers (of seconds, say) greater than 0.
    """
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{value!r} is not a number above 0")
    return number


positiveFloat.coerceDoc = "A number above 0."  # type: ignore[attr-defined]


class HandlerOptions(usage.Options):
    """
    The options a handler class declares (C{Options = ...} on the class).

    Declare C{optParameters} (C{[longName, None, default, help, coerce]})
    and C{optFlags} (C{[longName, None, help]}); long names are lower case
    with dashes. A coerce function raises L{ValueError} with a short
    message for a bad value; C{postOptions} may check values together and
    raise L{usage.UsageError}.

    @ivar serverOptions: the options of C{twistd esmtpkit} (a mapping, see
        L{esmtpkit.server.tap.Options}) when parsed from its command line,
        else an empty dict; C{fromHandlerOptions} may read C{settings},
        C{hostname} or a compatible spelling such as C{maildir} there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.serverOptions: Mapping[str, Any] = {}

    @classmethod
    def names(cls) -> list[tuple[str, bool]]:
        """
        The declared long names, each with whether it takes a value.
        """
        found: list[tuple[str, bool]] = []
        for parameter in getattr(cls, "optParameters", None) or []:
            found.append((parameter[0], True))
        for flag in getattr(cls, "optFlags", None) or []:
            found.append((flag[0], False))
        return found

    def keywords(self) -> dict[str, Any]:
        """
        The parsed values under their camelCased names, flags as L{bool}.
        """
        values: dict[str, Any] = {}
        for name, takesValue in self.names():
            value = self.opts.get(name)
            values[camelCase(name)] = value if takesValue else bool(value)
        return values

    def parseHandlerOptions(self, pairs: Sequence[str]) -> None:
        """
        Parse C{key=value} and C{key} items (the values of
        C{--handler-option}).

        @raise usage.UsageError: an unknown key, a value for a flag, a flag
            without a value, or a value its coerce function refused; the
            message is one line naming the key.
        """
        known = dict(self.names())
        coercers = {
            parameter[0]: parameter[4]
            for parameter in getattr(self, "optParameters", None) or []
            if len(parameter) > 4 and parameter[4] is not None
        }
        arguments = []
        for pair in pairs:
            key, equals, value = pair.partition("=")
            if key not in known:
                choices = ", ".join(sorted(known)) or "none"
                raise usage.UsageError(
                    f"unknown handler option {key!r} (known: {choices})"
                )
            if known[key] and not equals:
                raise usage.UsageError(f"handler option {key} needs a value: {key}=...")
            if not known[key] and equals:
                raise usage.UsageError(f"handler option {key} is a flag: give no value")
            coerce = coercers.get(key)
            if coerce is not None:
                try:
                    coerce(value)
                except ValueError as e:
                    raise usage.UsageError(f"{key}: {_oneLine(str(e))}") from None
            arguments.append(f"--{key}={value}" if equals else f"--{key}")
        try:
            self.parseOptions(arguments)
        except usage.UsageError as e:
            raise usage.UsageError(_oneLine(str(e))) from None

    def describe(self) -> str:
        """
        The options as C{--handler-option} spells them, with their help and
        defaults, for C{--help}.
        """
        lines = []
        for parameter in getattr(self, "optParameters", None) or []:
            name, _, default, *rest = list(parameter) + [None, None]
            text = rest[0] or ""
            coerce = rest[1] if len(rest) > 1 else None
            doc = getattr(coerce, "coerceDoc", "")
            shown = f" [default: {default}]" if default is not None else ""
            lines.append((f"{name}=VALUE", f"{text} {doc}".strip() + shown))
        for flag in getattr(self, "optFlags", None) or []:
            lines.append((flag[0], flag[2] if len(flag) > 2 else ""))
        if not lines:
            return "  (no options)\n"
        width = max(len(left) for left, _ in lines) + 4
        out = []
        for left, text in lines:
            wrapped = textwrap.wrap(text, max(30, 79 - width)) or [""]
            out.append(f"  {left.ljust(width - 2)}{wrapped[0]}")
            out.extend(" " * width + more for more in wrapped[1:])
        return "\n".join(out) + "\n"


def _oneLine(text: str) -> str:
    text = " ".join(text.split())
    prefix = "Parameter type enforcement failed: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def splitHandlerNames(value: str) -> list[str]:
    """
    The dotted names of a C{--handler} value: one, or a comma-separated
    chain.
    """
    return [name.strip() for name in value.split(",") if name.strip()]


def _checkHandler(name: str, handler: Any) -> None:
    if inspect.isclass(handler):
        if not IESMTPHandler.implementedBy(handler):
            raise StartupError(
                f"--handler {name}: {handler.__name__} does not implement "
                "esmtpkit.IESMTPHandler (subclass esmtpkit.ESMTPHandler)"
            )
        try:
            verifyClass(IESMTPHandler, handler)
        except Invalid as e:
            raise StartupError(f"--handler {name}: {e}") from None
    elif not callable(handler):
        raise StartupError(f"--handler {name}: not a class or callable but {handler!r}")


def _assign(
    names: Sequence[str], handlers: Sequence[Any], pairs: Sequence[str]
) -> list[list[str]]:
    """
    Which handler of a chain each C{--handler-option} is for: C{key=value}
    goes to the one handler that declares C{key}; C{Prefix.key=value} to
    the handler whose dotted name, last name part, or 1-based position in
    the chain is C{Prefix}.
    """
    declared = [
        dict(options.names()) if (options := _optionsClass(h)) is not None else {}
        for h in handlers
    ]
    given: list[list[str]] = [[] for _ in handlers]
    for pair in pairs:
        key, equals, value = pair.partition("=")
        prefix, dot, bare = key.rpartition(".")
        if dot:
            chosen = [
                index
                for index, name in enumerate(names)
                if prefix in (name, name.rpartition(".")[2], str(index + 1))
            ]
            if not chosen:
                raise StartupError(
                    f"--handler-option {pair}: {prefix!r} names no handler of "
                    f"--handler {','.join(names)}"
                )
            if len(chosen) > 1:
                raise StartupError(
                    f"--handler-option {pair}: {prefix!r} names several handlers; "
                    "give the position instead (1.key=value)"
                )
            given[chosen[0]].append(bare + equals + value)
            continue
        if len(handlers) == 1:
            given[0].append(pair)
            continue
        chosen = [index for index, known in enumerate(declared) if key in known]
        if len(chosen) != 1:
            problem = (
                "no handler of the chain declares it"
                if not chosen
                else ("several handlers declare it")
            )
            raise StartupError(
                f"--handler-option {pair}: {problem}; give it as Name.{pair}"
            )
        given[chosen[0]].append(pair)
    return given


def _optionsClass(handler: Any) -> type[HandlerOptions] | None:
    options = getattr(handler, "Options", None)
    if options is None:
        return None
    if not (inspect.isclass(options) and issubclass(options, HandlerOptions)):
        raise StartupError(
            f"{getattr(handler, '__name__', handler)}.Options is not a subclass "
            "of esmtpkit.handlers.HandlerOptions"
        )
    return options


def _factoryFor(
    name: str, handler: Any, pairs: Sequence[str], serverOptions: Mapping[str, Any]
) -> HandlerFactory:
    optionsClass = _optionsClass(handler)
    if optionsClass is None:
        if pairs:
            raise StartupError(
                f"--handler {name}: takes no --handler-option (given {pairs[0]!r})"
            )
        fromOptions = getattr(handler, "fromOptions", None)
        if fromOptions is None:
            return handler  # type: ignore[no-any-return]
        try:
            return fromOptions(serverOptions)  # type: ignore[no-any-return]
        except usage.UsageError:
            raise
        except Exception as e:
            raise StartupError(f"--handler {name}: {e}") from None
    options = optionsClass()
    options.serverOptions = serverOptions
    try:
        options.parseHandlerOptions(pairs)
    except usage.UsageError as e:
        raise StartupError(f"--handler {name}: {e}") from None
    fromHandlerOptions = getattr(handler, "fromHandlerOptions", None)
    try:
        if fromHandlerOptions is not None:
            return fromHandlerOptions(options)  # type: ignore[no-any-return]
        keywords = options.keywords()
        _checkSignature(handler, keywords)
        return lambda: handler(**keywords)
    except (usage.UsageError, ValueError, TypeError, OSError) as e:
        text = str(e)
        if isinstance(e, OSError) and e.strerror:
            text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        raise StartupError(f"--handler {name}: {_oneLine(text)}") from None


def _checkSignature(handler: Any, keywords: Mapping[str, Any]) -> None:
    # A declared option the constructor does not take is a bug of the
    # handler; say so now rather than at the first connection.
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**keywords)
    except TypeError as e:
        raise TypeError(f"its options do not fit its constructor: {e}") from None


def handlerFactory(
    value: str,
    pairs: Sequence[str] = (),
    serverOptions: Mapping[str, Any] | None = None,
) -> HandlerFactory:
    """
    The handler factory that C{--handler VALUE} with C{--handler-option}
    items C{pairs} describes: one handler, or a L{Chain} of several
    (C{a.X,b.Y}).

    @param serverOptions: given to C{fromOptions} and kept in
        L{HandlerOptions.serverOptions}.
    @raise StartupError: a name that cannot be resolved, an object that is
        not a handler, or a bad option (one line).
    """
    names = splitHandlerNames(value)
    if not names:
        raise StartupError(f"--handler {value!r}: no handler named")
    handlers = [resolveName(name) for name in names]
    for name, handler in zip(names, handlers, strict=True):
        _checkHandler(name, handler)
    serverOptions = {} if serverOptions is None else serverOptions
    given = _assign(names, handlers, list(pairs))
    factories = [
        _factoryFor(name, handler, mine, serverOptions)
        for name, handler, mine in zip(names, handlers, given, strict=True)
    ]
    if len(factories) == 1:
        return factories[0]
    from .chain import Chain

    return Chain.factory(factories)


def handlerHelp(value: str) -> str:
    """
    The C{--help} text of the handlers C{--handler VALUE} names: each one's
    options as C{--handler-option} spells them.
    """
    out = []
    for name in splitHandlerNames(value):
        handler = resolveName(name)
        optionsClass = _optionsClass(handler)
        out.append(f"Options of {name} (--handler-option KEY=VALUE, or KEY):\n")
        if optionsClass is None:
            uses = (
                " (reads twistd esmtpkit's options)"
                if hasattr(handler, "fromOptions")
                else ""
            )
            out.append(f"  (no options){uses}\n")
        else:
            out.append(optionsClass().describe())
    return "".join(out)
