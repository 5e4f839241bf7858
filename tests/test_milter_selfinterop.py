"""
esmtpkit on both sides of the milter protocol: C{twistd esmtpkit --milter
inet:...} (the milter client, with the Recorder handler behind it) asks
C{twistd esmtpkit -p milter:...} (the milter server face running
L{PolicyMilter}). Its refusals reach the SMTP client, its changes land on
the transaction's modifications, and what it saw of the session came from
the client's connect information and macros.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import LOOPBACK, PROJECT_ROOT, TwistdServer, freePort
from .milterhandlers import (
    ADDED_RECIPIENT,
    BUSY_SENDER,
    DELETED_RECIPIENT,
    NEW_BODY,
    NEW_SENDER,
    REFUSED_RECIPIENT,
    waitForMilter,
)
from .milterprocs import esmtpkitWithMilters, queuedId, records, transact

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"Subject: hello\r\n"
    b"X-Folded: first\r\n"
    b"\tsecond\r\n"
    b"\r\n"
    b"Original body.\r\n"
)


@pytest.fixture(scope="module")
def smtpPort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    folder = tmp_path_factory.mktemp("selfinterop")
    milterPort = freePort()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
    )
    milterDir = folder / "milter"
    milterDir.mkdir()
    args = ["-n", "--pidfile=", "esmtpkit", "--handler"]
    args += ["tests.milterhandlers.PolicyMilter"]
    args += ["-p", f"milter:tcp:{milterPort}:interface={LOOPBACK}"]
    with TwistdServer(args, cwd=milterDir, port=None, env=env) as milter:
        waitForMilter(milterPort, process=milter.process)
        server, port = esmtpkitWithMilters(folder, [f"inet:{LOOPBACK}:{milterPort}"])
        with server:
            yield port, folder


def test_changesRecorded(smtpPort: tuple[int, Path]) -> None:
    port, folder = smtpPort
    result = transact(
        port,
        "alice@sender.test",
        ["bob@example.org", DELETED_RECIPIENT],
        MESSAGE,
    )
    code, text = result["data"]
    assert code == 250, result
    record = records(folder)[queuedId(text)]
    assert bytes.fromhex(record["message"]) == MESSAGE
    kinds = [(kind, name) for kind, name, _, _ in record["headers"]]
    assert kinds == [
        ("add", "X-Milter-Session"),
        ("add", "X-Milter"),
        ("insert", "X-Milter-Top"),
        ("change", "Subject"),
    ]
    seen = record["headers"][0][2]
    assert "helo=client.test.example" in seen
    assert f"peer={LOOPBACK}" in seen
    assert f"id={record['id']}" in seen
    assert "from=alice@sender.test" in seen
    assert f"to=bob@example.org,{DELETED_RECIPIENT}" in seen
    assert "headers=From,Subject,X-Folded" in seen
    assert record["headers"][3][2] == "changed by the milter"
    assert bytes.fromhex(record["body"]) == NEW_BODY
    assert record["newSender"][0] == NEW_SENDER
    assert [a for a, _ in record["added"]] == [ADDED_RECIPIENT]
    assert record["deleted"] == [DELETED_RECIPIENT]


def test_refusals(smtpPort: tuple[int, Path]) -> None:
    port, folder = smtpPort
    refused = transact(
        port, "alice@sender.test", [REFUSED_RECIPIENT, "bob@example.org"], MESSAGE
    )
    assert refused["rcpt"][0] == (550, b"5.1.1 No such user here (100% sure)")
    assert refused["data"][0] == 250
    busy = transact(port, BUSY_SENDER, ["bob@example.org"], MESSAGE)
    assert busy["data"] == (451, b"4.3.2 Busy sender, try later")
    before = set(records(folder))
    forbidden = transact(
        port,
        "alice@sender.test",
        ["bob@example.org"],
        b"Subject: a forbidden word\r\n\r\nbody\r\n",
    )
    assert forbidden["data"] == (554, b"5.7.1 Subject refused by policy")
    assert set(records(folder)) == before
