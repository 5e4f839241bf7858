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
from typing import Any

import dkim
import pytest

from .helpers import LOOPBACK, freePort, maildirFiles
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


def opendkim(tmp_path: Path, canonicalization: str) -> tuple[MilterProcess, str]:
    """
    OpenDKIM (not yet started) signing for example.org with a new key, and
    the public key's TXT record.
    """
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
    return MilterProcess([OPENDKIM, "-f", "-x", str(config)], tmp_path, port), record


def publicKey(record: str) -> Any:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"test._domainkey.example.org."
        return record.encode()

    return dnsfunc


@pytest.mark.parametrize("canonicalization", ["simple/simple", "relaxed/relaxed"])
def test_opendkimSignatureVerifies(tmp_path: Path, canonicalization: str) -> None:
    """
    The change OpenDKIM asks for is recorded, and applied to the message
    received it makes a signature that verifies.
    """
    milter, record = opendkim(tmp_path, canonicalization)
    with milter:
        server, smtpPort = esmtpkitWithMilters(
            tmp_path, [f"inet:{LOOPBACK}:{milter.port}"]
        )
        with server:
            result = transact(
                smtpPort, "alice@example.org", ["bob@example.net"], MESSAGE
            )
    code, text = result["data"]
    assert code == 250, (result, milter.outputPath.read_text())
    taken = records(tmp_path)[queuedId(text)]
    assert bytes.fromhex(taken["message"]) == MESSAGE
    changes = taken["headers"]
    assert [c[1] for c in changes] == ["DKIM-Signature"], changes
    assert f"c={canonicalization}" in changes[0][2]
    signedFields = re.search(r"(?:^|[;\s])h=([^;]*)", changes[0][2])
    assert signedFields is not None
    assert "subject" in signedFields.group(1).lower()
    signed = applyHeaders(MESSAGE, changes)

    dnsfunc = publicKey(record)
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    # And the signature covers the content: a changed body fails.
    assert not dkim.verify(signed.replace(b"is signed", b"is forged"), dnsfunc=dnsfunc)


@pytest.mark.parametrize("canonicalization", ["simple/simple", "relaxed/relaxed"])
def test_signedIntoMaildir(tmp_path: Path, canonicalization: str) -> None:
    """
    With the built-in Maildir behind OpenDKIM, the message stored verifies
    as it is on disk (the delivery headers above it are not signed).
    """
    milter, record = opendkim(tmp_path, canonicalization)
    maildir = tmp_path / "Maildir"
    with milter:
        server, smtpPort = esmtpkitWithMilters(
            tmp_path,
            [f"inet:{LOOPBACK}:{milter.port}"],
            "--maildir",
            str(maildir),
            handler="esmtpkit.handlers.Maildir",
        )
        with server:
            result = transact(
                smtpPort, "alice@example.org", ["bob@example.net"], MESSAGE
            )
    assert result["data"][0] == 250, result
    (stored,) = maildirFiles(maildir, "new")
    data = stored.read_bytes()
    assert b"\r\nDKIM-Signature: v=1;" in data or data.startswith(b"DKIM-Signature:")
    assert data.endswith(MESSAGE.partition(b"\r\n\r\n")[2])
    dnsfunc = publicKey(record)
    assert dkim.verify(data, dnsfunc=dnsfunc)
    assert not dkim.verify(data.replace(b"is signed", b"is forged"), dnsfunc=dnsfunc)
