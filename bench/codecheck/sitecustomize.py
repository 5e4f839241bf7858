"""
The benchmark's code check, loaded by every esmtpkit server that bench.py
starts (this folder is on the server's PYTHONPATH, after the code it should
run). When ESMTPKIT_BENCH_CODE names a folder, the process writes
C{<folder>/<pid>.json} each time it gets the signal L{SIGNAL}: the file of
every esmtpkit module it has loaded, of the twistd plugin module, of the
module each of the plugin's service makers names, and of the C{--handler}
class. bench.py sends the signal after each scenario's load, before it stops
the server, and checks that all of them come from the tree that server was
meant to run (the checkout, or the C{--baseline} revision's copy).

(Not at exit: twistd ends on SIGTERM by killing itself with it again, so no
atexit hook would run.) Nothing of this runs while the server serves: one
signal handler, no import hook. Another sitecustomize further along
sys.path is still run.
"""

import os
import signal
import sys

PLUGIN = "twisted.plugins.esmtpkit_plugin"
SIGNAL = signal.SIGRTMIN + 3  # bench.py sends the same; nobody else uses it


def _chain() -> None:
    """
    Run the sitecustomize this one hides, if there is one.
    """
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def _where(name: str) -> list[str] | None:
    module = sys.modules.get(name)
    if module is None:
        return None
    path = getattr(module, "__file__", None)
    return [path] if path else list(getattr(module, "__path__", []))


def _handler() -> dict[str, object] | None:
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg == "--handler" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--handler="):
            name = arg.split("=", 1)[1]
        else:
            continue
        moduleName, _, attribute = name.rpartition(".")
        found = getattr(sys.modules.get(moduleName), attribute, None)
        definedIn = getattr(found, "__module__", None)
        return {"name": name, "module": definedIn, "file": _where(definedIn or "")}
    return None


def _record(folder: str) -> None:
    import json

    names = [
        n
        for n in list(sys.modules)
        if n == "esmtpkit" or n.startswith("esmtpkit.") or n == PLUGIN
    ]
    makers = []
    plugin = sys.modules.get(PLUGIN)
    for value in list(vars(plugin).values()) if plugin else []:
        tapname, module = (
            getattr(value, "tapname", None),
            getattr(value, "module", None),
        )
        if isinstance(tapname, str) and isinstance(module, str):
            makers.append(
                {"tapname": tapname, "module": module, "file": _where(module)}
            )
    record = {
        "pid": os.getpid(),
        "executable": sys.executable,
        "argv": sys.argv,
        "modules": {n: _where(n) for n in sorted(names)},
        "plugin": _where(PLUGIN),
        "makers": makers,
        "handler": _handler(),
    }
    path = os.path.join(folder, f"{os.getpid()}.json")
    with open(path + ".part", "w") as out:
        json.dump(record, out)
    os.replace(path + ".part", path)


_folder = os.environ.get("ESMTPKIT_BENCH_CODE")
if _folder:
    signal.signal(SIGNAL, lambda signum, frame: _record(_folder))
_chain()
