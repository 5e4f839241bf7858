"""
C{python -m esmtpkit}: the server, or the SCRAM verifier tool.

  - C{python -m esmtpkit [OPTIONS]} runs the server in the foreground with
    the options of C{twistd esmtpkit}: it is C{twistd --nodaemon
    --pidfile= esmtpkit [OPTIONS]}, run by twistd's own machinery (the same
    start-up checks, log on standard output, signals and exit status), with
    no pid file. With no options, the default server (127.0.0.1:2525 into
    ./Maildir). C{-h}/C{--help} lists the options.
  - C{python -m esmtpkit scram USER [ITERATIONS]} prints a SCRAM-SHA-256
    verifier line (L{esmtpkit.security.scram.main}).

Unlike C{twistd}, C{python -m} puts the current directory on the module
path, so C{--handler mymodule.MyHandler} finds C{./mymodule.py}.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.python import usage
from zope.interface import implementer

__all__ = ["main", "serve"]

PROGRAM = "python -m esmtpkit"


def _options() -> Any:
    from .server.tap import Options

    class CLIOptions(Options):
        longdesc = (
            Options.longdesc
            + f" The same as twistd --nodaemon --pidfile= esmtpkit [options]. "
            f"'{PROGRAM} scram USER [ITERATIONS]' prints a SCRAM-SHA-256 "
            "verifier line for --auth scram-file:PATH instead."
        )

    return CLIOptions()


@implementer(IServiceMaker)
class _Plugin:
    """
    The one C{IServiceMaker} the command knows: esmtpkit's.
    """

    tapname = "esmtpkit"
    description = "esmtpkit"

    def options(self) -> Any:
        return _options()

    def makeService(self, options: Any) -> Any:
        from .server.tap import makeService

        return makeService(options)


def _twistdOptions() -> Any:
    from twisted.scripts.twistd import (  # type: ignore[attr-defined]
        ServerOptions,
    )

    class Options(ServerOptions):
        # The sub-command's usage line reads "Usage: python -m esmtpkit
        # [options]".
        synopsis = "Usage: python -m"

        @property
        def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
            plugin = _Plugin()
            self.loadedPlugins = {plugin.tapname: plugin}
            yield (plugin.tapname, None, plugin.options, plugin.description)

    return Options()


def serve(args: Sequence[str]) -> int:
    """
    Run the server with C{args}, the options of C{twistd esmtpkit}.

    @return: the exit status (2 for a usage error); a start-up error exits
        with its one line (L{esmtpkit.server.startup.StartupError}).
    """
    from twisted.scripts.twistd import runApp

    config = _twistdOptions()
    try:
        config.parseOptions(["--nodaemon", "--pidfile=", "esmtpkit", *args])
    except usage.UsageError as e:
        print(f"{PROGRAM}: {e}", file=sys.stderr)
        print(f"({PROGRAM} --help lists the options)", file=sys.stderr)
        return 2
    runApp(config)
    return 0


def main(args: Sequence[str]) -> int:
    """
    C{python -m esmtpkit ARGS}.
    """
    if args[:1] == ["scram"]:
        from .security.scram import main as scram

        return scram(list(args[1:]))
    return serve(args)
