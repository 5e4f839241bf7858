"""
The esmtpkit pytest plugin (installed with C{esmtpkit[test]}, loaded by
pytest through its C{pytest11} entry point): the C{esmtpkit_server}
fixture.

    def test_delivers(esmtpkit_server):
        server = esmtpkit_server(MyHandler)  # a real server, started
        with smtplib.SMTP(*server.address) as client:
            client.sendmail("a@example.org", ["b@example.org"], "Subject: hi")
        assert server.deliveries[0].outcome == "accepted"

The fixture is a factory: call it with a handler class or factory and
L{LiveServer <esmtpkit.liveserver.LiveServer>}'s keyword arguments
(C{kind="lmtp"}, C{maildir=...}, settings such as C{maxMessageSize=1000});
each call starts one more server. Every server it started is stopped when
the test ends, whatever its outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .liveserver import LiveServer

__all__ = ["esmtpkit_server"]


@pytest.fixture
def esmtpkit_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """
    A factory of started L{LiveServer}s: C{esmtpkit_server(handler=None,
    *, kind="smtp", maildir=None, **settings)}. A Maildir handler (the
    default) without C{maildir} gets a new folder under the test's
    C{tmp_path} (C{Maildir}, C{Maildir-2}, ...).
    """
    servers: list[LiveServer] = []

    def start(handler: Callable[..., Any] | None = None, **kwargs: Any) -> LiveServer:
        if "maildir" not in kwargs:
            suffix = f"-{len(servers) + 1}" if servers else ""
            kwargs["maildir"] = tmp_path / f"Maildir{suffix}"
        server = LiveServer(handler, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield start
    errors = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as e:
            errors.append(f"{server.kind} server on port {server.port}: {e!r}")
    assert not errors, "esmtpkit servers did not stop:\n" + "\n".join(errors)
