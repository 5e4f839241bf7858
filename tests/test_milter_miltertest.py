"""
An independent milter client drives esmtpkit's milter face: Debian's
C{miltertest} (OpenDKIM's MTA simulator, Lua scripts) runs
C{tests/lua/policy.lua} against C{twistd esmtpkit} serving
L{PolicyMilter <tests.milterhandlers.PolicyMilter>}: negotiation, a refused
recipient, the EOM changes, a Subject refused at HEADER, ABORT, a DATA
tempfail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .helpers import LOOPBACK, PROJECT_ROOT, TwistdServer, freePort
from .milterhandlers import waitForMilter

SCRIPT = Path(__file__).with_name("lua") / "policy.lua"


def test_miltertestScript(tmp_path: Path) -> None:
    miltertest = shutil.which("miltertest")
    assert miltertest is not None, "miltertest is missing: apt-get install miltertest"
    port = freePort()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
    )
    args = ["-n", "--pidfile=", "esmtpkit", "--handler"]
    args += ["tests.milterhandlers.PolicyMilter"]
    args += ["-p", f"milter:tcp:{port}:interface={LOOPBACK}"]
    with TwistdServer(args, cwd=tmp_path, port=None, env=env) as server:
        waitForMilter(port, process=server.process)
        result = subprocess.run(
            [miltertest, "-D", f"port={port}", "-s", str(SCRIPT)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        output = server.output()
    assert result.returncode == 0, result.stdout + result.stderr + output
    assert result.stdout.rstrip().endswith("all passed"), result.stdout
    checks = SCRIPT.read_text().count("\ncheck(")
    assert checks > 30
    assert result.stdout.count("ok: ") == checks, result.stdout
    assert "Traceback" not in output and "protocol error" not in output, output
