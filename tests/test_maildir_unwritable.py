"""
The L{Maildir} handler with a folder it cannot write, for real: C{twistd
esmtpkit --maildir} runs as a subprocess with C{tmp/} or C{new/} made
read-only (when the tests run as root, the subprocess runs without the
capabilities that let root ignore file permissions). The client gets
C{452 4.3.1}, the server logs why, no file is left, and the session goes
on.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import LOOPBACK, TwistdServer, freePort, maildirFiles

# linux/prctl.h and linux/capability.h
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
MESSAGE = b"From: a@example.org\r\nSubject: nowhere to go\r\n\r\nbody\r\n"


def _heedPermissions() -> None:
    # In the child before exec: out of the capability bounding set, these
    # are not in the program's capabilities after exec, so root is held to
    # the permission bits like any owner.
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def workDir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="esmtpkit-unwritable-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    ("locked", "refusedAt"), [("tmp", "DATA"), ("new", "end of data")]
)
def test_unwritableFolder(workDir: Path, locked: str, refusedAt: str) -> None:
    """
    C{tmp/} read-only: DATA gets 452 4.3.1 (no file can be made). C{new/}
    read-only: the message is received, then the move into new/ fails:
    452 4.3.1 after the data, and the file in tmp/ is removed. Either way
    the session goes on and the log says why.
    """
    maildir = workDir / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    (maildir / locked).chmod(0o555)
    port = freePort()
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
        "--maildir",
        str(maildir),
    ]
    with TwistdServer(args, cwd=workDir, port=port, preexec=_heedPermissions) as server:
        with smtplib.SMTP(LOOPBACK, port, "client.test", timeout=30) as smtp:
            smtp.ehlo()
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("b@example.org")[0] == 250
            code, text = smtp.docmd("DATA")
            if refusedAt == "end of data":
                assert code == 354, (code, text)
                smtp.send(MESSAGE + b".\r\n")
                code, text = smtp.getreply()
            assert (code, text) == (452, b"4.3.1 Insufficient system storage")
            assert smtp.noop()[0] == 250
        assert maildirFiles(maildir, "tmp") == []
        assert maildirFiles(maildir, "new") == []
        output = server.output()
        assert "Maildir: cannot store" in output, output
        assert "Permission denied" in output, output
        assert "Traceback" not in output, output
