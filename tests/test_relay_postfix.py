"""
The Relay handler in front of a private Postfix (L{tests.postfix.PrivatePostfix}):
C{twistd esmtpkit --handler esmtpkit.handlers.Relay} as a subprocess relays
to Postfix's smtpd, which delivers to an esmtpkit Maildir server (another
subprocess). A recipient Postfix refuses is refused at RCPT; the client
gets Postfix's queue ID at the end of the message; STARTTLS to Postfix
with the test CA. Without Postfix the harness fails the test (no skip).
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import (
    LOOPBACK,
    PROJECT_ROOT,
    TwistdServer,
    freePort,
    maildirFiles,
    splitReceived,
)
from .postfix import PrivatePostfix
from .tlshelpers import sharedPKI

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: through the relay and Postfix\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a dotted line\r\n"
    b"..\r\n"
    b"\xe2\x82\xac 8-bit line\r\n"
)
REFUSED = "nobody@example.org"


def _twistd(directory: Path, *options: str) -> TwistdServer:
    directory.mkdir()
    port = freePort()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
    )
    args = [
        "-n",
        "--pidfile=",
        "esmtpkit",
        "--port",
        f"tcp:{port}:interface={LOOPBACK}",
    ]
    return TwistdServer([*args, *options], cwd=directory, port=port, env=env)


@pytest.fixture
def chain(
    privatePostfix: Callable[..., PrivatePostfix], tmp_path: Path
) -> Iterator[Callable[..., tuple[int, PrivatePostfix, Path]]]:
    """
    A factory of the whole chain: a Maildir server, a Postfix that relays
    example.org to it and refuses L{REFUSED} at RCPT, and a relay to that
    Postfix with the given C{--handler-option}s. It returns the relay's
    port, the Postfix and the Maildir; everything is stopped afterwards.
    """
    servers: list[TwistdServer] = []

    def make(
        *relayOptions: str, tls: bool = False, **settings: str
    ) -> tuple[int, PrivatePostfix, Path]:
        maildir = tmp_path / "Maildir"
        final = _twistd(
            tmp_path / "final", "--maildir", str(maildir), "--hostname", "final.test"
        )
        servers.append(final)
        final.start()
        postfix = privatePostfix(
            f"smtp:[{LOOPBACK}]:{final.port}",
            start=False,
        )
        conf = postfix.configDirectory
        (conf / "access").write_text(f"{REFUSED} 550 5.1.1 No such user here\n")
        postfix.extra.update(settings)
        postfix.extra["smtpd_recipient_restrictions"] = (
            f"check_recipient_access texthash:{conf}/access, permit_mynetworks, reject"
        )
        if tls:
            # In the instance's folder: Postfix's daemons must reach them.
            pki = sharedPKI()
            for source in (pki.serverCert, pki.serverKey):
                shutil.copy(source, postfix.base / source.name)
                (postfix.base / source.name).chmod(0o644)
            postfix.extra.update(
                smtpd_tls_security_level="may",
                smtpd_tls_cert_file=str(postfix.base / pki.serverCert.name),
                smtpd_tls_key_file=str(postfix.base / pki.serverKey.name),
                smtpd_tls_loglevel="1",
            )
        postfix.start()
        if tls:
            # smtpd's TLS needs tlsmgr (its entropy); tests/postfix.py runs
            # none, so it is added here for this instance.
            postfix.postconf(
                "-M", "tlsmgr/unix=tlsmgr unix - - n 1000? 1 tlsmgr", reload=True
            )
            _wait(lambda: _offersStartTLS(postfix.smtpPort))
        options = [f"host={LOOPBACK}", f"port={postfix.smtpPort}", *relayOptions]
        relay = _twistd(
            tmp_path / "relay",
            "--hostname",
            "relay.test",
            "--handler",
            "esmtpkit.handlers.Relay",
            *[item for option in options for item in ("--handler-option", option)],
        )
        servers.append(relay)
        relay.start()
        assert relay.port is not None
        return relay.port, postfix, maildir

    try:
        yield make
    finally:
        for server in reversed(servers):
            server.stop()


def _offersStartTLS(port: int) -> bool:
    with smtplib.SMTP(LOOPBACK, port, local_hostname="probe.test", timeout=10) as s:
        s.ehlo()
        return s.has_extn("starttls")


def _wait(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_throughPostfix(chain: Callable[..., tuple[int, PrivatePostfix, Path]]) -> None:
    """
    A recipient Postfix refuses is refused at RCPT with Postfix's code and
    text; the other gets the message, whose end the client sees answered
    with Postfix's queue ID; it arrives once, intact, after the relay's
    Received header and Postfix's.
    """
    port, postfix, maildir = chain("tls=off")
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert s.mail("alice@sender.test")[0] == 250
        refused = s.rcpt(REFUSED)
        accepted = s.rcpt("bob@example.org")
        code, text = s.data(MESSAGE)
    assert refused[0] == 550 and b"5.1.1" in refused[1], refused
    assert b"No such user here" in refused[1], refused
    assert accepted[0] == 250
    assert code == 250, text
    queued = re.search(rb"queued as ([0-9A-F]+)", text)
    assert queued is not None, text
    queueId = queued.group(1).decode()

    delivery = postfix.deliveryStatus("bob@example.org", queueId)
    assert delivery.status == "sent", delivery
    _wait(lambda: maildirFiles(maildir, "new"))
    [path] = maildirFiles(maildir, "new")
    final, rest = splitReceived(path.read_bytes())
    assert b"final.test" in final
    postfixReceived, rest = splitReceived(rest)
    assert b"postfix.test (Postfix)" in postfixReceived
    relayReceived, body = splitReceived(rest)
    assert b"by relay.test" in relayReceived, relayReceived
    assert body == MESSAGE
    assert postfix.deliveries(REFUSED) == []


def test_startTLSToPostfix(
    chain: Callable[..., tuple[int, PrivatePostfix, Path]],
) -> None:
    """
    tls=required with the test CA: Postfix logs a TLS connection from the
    relay, and the message is delivered.
    """
    pki = sharedPKI()
    port, postfix, maildir = chain("tls=required", f"ca-file={pki.caCert}", tls=True)
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        mail = s.mail("alice@sender.test")
        assert mail[0] == 250, mail
        s.rcpt("bob@example.org")
        code, text = s.data(MESSAGE)
    assert code == 250, text
    postfix.waitForLog(
        r"TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.[23]"
    )
    _wait(lambda: maildirFiles(maildir, "new"))


def test_deferredAtData(chain: Callable[..., tuple[int, PrivatePostfix, Path]]) -> None:
    """
    Postfix defers DATA (C{smtpd_data_restrictions = defer}): the client
    gets Postfix's 450 at DATA, and nothing is delivered.
    """
    port, postfix, maildir = chain("tls=off", smtpd_data_restrictions="defer")
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        s.mail("alice@sender.test")
        s.rcpt("bob@example.org")
        code, text = s.docmd("DATA")
        reset = s.rset()
    assert code == 450, text
    assert text == b"4.3.2 <DATA>: Data command rejected: Try again later", text
    assert reset[0] == 250
    postfix.waitForLog(r"disconnect from .* rset=1 quit=1")
    assert postfix.queueIds() == []
    assert maildirFiles(maildir, "new") == []
