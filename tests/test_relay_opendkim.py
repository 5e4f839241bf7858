"""
The relay behind a real milter: C{twistd esmtpkit --milter} with Debian's
OpenDKIM signing (its own key and config in a temp dir, loopback socket)
in front of C{esmtpkit.handlers.Relay}, relaying to a second C{twistd
esmtpkit} with the built-in Maildir; every process is started and stopped
by the test. The milter filter declares C{mayModify}, so the relay spools
and sends the signed message: the copy the upstream stores verifies with
dkimpy (public key given directly, no DNS).
"""

from __future__ import annotations

from pathlib import Path

import dkim

from .helpers import LOOPBACK, maildirFiles
from .milterprocs import esmtpkitWithMilters, transact
from .test_milter_opendkim import MESSAGE, opendkim, publicKey


def test_signedThroughTheRelay(tmp_path: Path) -> None:
    """
    OpenDKIM's DKIM-Signature is applied by the relay: the upstream's copy
    carries it, verifies, and a changed body does not.
    """
    milter, record = opendkim(tmp_path, "relaxed/relaxed")
    upstreamDir = tmp_path / "upstream"
    upstreamDir.mkdir()
    maildir = upstreamDir / "Maildir"
    upstream, upstreamPort = esmtpkitWithMilters(
        upstreamDir, [], "--maildir", str(maildir), handler="esmtpkit.handlers.Maildir"
    )
    relayOptions = [f"host={LOOPBACK}", f"port={upstreamPort}", "tls=off"]
    relay, relayPort = esmtpkitWithMilters(
        tmp_path,
        [f"inet:{LOOPBACK}:{milter.port}"],
        *[arg for option in relayOptions for arg in ("--handler-option", option)],
        handler="esmtpkit.handlers.Relay",
    )
    with milter, upstream, relay:
        result = transact(relayPort, "alice@example.org", ["bob@example.net"], MESSAGE)
    assert result["data"][0] == 250, (result, milter.outputPath.read_text())
    (stored,) = maildirFiles(maildir, "new")
    data = stored.read_bytes()
    assert b"\r\nDKIM-Signature: v=1;" in data
    assert data.endswith(MESSAGE.partition(b"\r\n\r\n")[2])
    assert data.count(b"\r\nReceived: ") + data.startswith(b"Received: ") == 2
    dnsfunc = publicKey(record)
    assert dkim.verify(data, dnsfunc=dnsfunc)
    assert not dkim.verify(data.replace(b"is signed", b"is forged"), dnsfunc=dnsfunc)
