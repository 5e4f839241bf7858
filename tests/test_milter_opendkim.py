"""
esmtpkit's milter client in front of Debian's OpenDKIM in signing mode (its
own keys, made with opendkim-genkey, and config file in a temp dir; a
loopback socket; started and stopped by the test): the DKIM-Signature it
asks to add verifies with dkimpy, given the public key directly (no DNS).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dkim
import pytest

from .helpers import LOOPBACK, freePort
from .milterprocs import MilterProcess, esmtpkitWithMilters, queuedId, records, transact

OPENDKIM = shutil.which("opendkim", path="/usr/sbin:/usr/bin") or "/usr/sbin/opendkim"
GENKEY = (
    shutil.which("opendkim-genkey", path="/usr/sbin:/usr/bin")
    or "/usr/sbin/opendkim-genkey"
)

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: signed by\r\n"
    b"\tOpenDKIM,  folded\r\n"
    b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n"
    b"Message-ID: <dkim-test-1@example.org>\r\n"
    b"X-Folded: first\r\n"
    b"  second\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b"\r\n"
    b"this body is signed.\r\n"
)


def applyHeaders(message: bytes, changes: list[list[object]]) -> bytes:
    """
    C{message} with the recorded header additions and insertions applied,
    as a delivering handler writes them (C{Name: value}, line breaks CRLF).
    """
    head, _, body = message.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    for kind, name, value, index in changes:
        assert isinstance(name, str) and isinstance(value, str)
        text = f"{name}: {value}".replace("\r\n", "\n").replace("\n", "\r\n")
        field = text.encode()
        if kind == "add":
            fields.append(field)
        elif kind == "insert":
            assert isinstance(index, int)
            fields.insert(index, field)
        else:
            raise AssertionError(f"unexpected change {kind}")
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


@pytest.mark.parametrize("canonicalization", ["simple/simple", "relaxed/relaxed"])
def test_opendkimSignatureVerifies(tmp_path: Path, canonicalization: str) -> None:
    subprocess.run(
        [GENKEY, "-D", str(tmp_path), "-d", "example.org", "-s", "test"],
        check=True,
        timeout=60,
    )
    record = "".join(re.findall(r'"([^"]*)"', (tmp_path / "test.txt").read_text()))
    assert record.startswith("v=DKIM1;")
    port = freePort()
    config = tmp_path / "opendkim.conf"
    config.write_text(
        "Syslog no\n"
        "Background no\n"
        "Mode s\n"
        "Domain example.org\n"
        "Selector test\n"
        f"KeyFile {tmp_path / 'test.private'}\n"
        f"Socket inet:{port}@{LOOPBACK}\n"
        f"Canonicalization {canonicalization}\n"
        "InternalHosts 127.0.0.1\n"
        "RequireSafeKeys no\n"
        f"PidFile {tmp_path / 'opendkim.pid'}\n"
    )
    opendkim = MilterProcess([OPENDKIM, "-f", "-x", str(config)], tmp_path, port)
    with opendkim:
        server, smtpPort = esmtpkitWithMilters(tmp_path, [f"inet:{LOOPBACK}:{port}"])
        with server:
            result = transact(
                smtpPort, "alice@example.org", ["bob@example.net"], MESSAGE
            )
    code, text = result["data"]
    assert code == 250, (result, opendkim.outputPath.read_text())
    taken = records(tmp_path)[queuedId(text)]
    assert bytes.fromhex(taken["message"]) == MESSAGE
    changes = taken["headers"]
    assert [c[1] for c in changes] == ["DKIM-Signature"], changes
    assert f"c={canonicalization}" in changes[0][2]
    signedFields = re.search(r"(?:^|[;\s])h=([^;]*)", changes[0][2])
    assert signedFields is not None
    assert "subject" in signedFields.group(1).lower()
    signed = applyHeaders(MESSAGE, changes)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"test._domainkey.example.org."
        return record.encode()

    assert dkim.verify(signed, dnsfunc=dnsfunc)
    # And the signature covers the content: a changed body fails.
    assert not dkim.verify(signed.replace(b"is signed", b"is forged"), dnsfunc=dnsfunc)
