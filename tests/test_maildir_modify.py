"""
Tests for what the L{Maildir} handler does with a handler's modifications
(headers, body, sender, recipients, quarantine), and for its answer to a
full disk (C{452 4.3.1}, no file left), over the in-memory
L{SMTPTestConnection} with C{fsync=False}.

The full disk is simulated by wrapping C{os.open}, C{os.write},
C{os.sendfile} and C{os.rename} for the files of the test's Maildir only.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esmtpkit import ModifiedMessage
from esmtpkit.handlers import Maildir
from esmtpkit.session import Recipient, Transaction
from esmtpkit.testing import SMTPTestConnection

from .helpers import maildirFiles, splitDelivery, splitReceived
from .test_rewrite import _change, _fieldBytes, _record

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Carol <carol@example.net>\r\n"
    b"Subject: a folded\r\n"
    b" subject line\r\n"
    b"X-Keep:   spaced  \r\n"
    b"\r\n"
    b"old body\r\n"
)


class Editing(Maildir):
    """
    Asks, at EOM, for the changes that C{self.edit} makes.
    """

    edit: Callable[[Any], None] = staticmethod(lambda changes: None)

    def EOM(self) -> Any:
        assert self.session.transaction is not None
        self.edit(self.session.transaction.modifications)
        return super().EOM()


def _connect(
    path: Path, edit: Callable[[Any], None] | None = None, **options: Any
) -> SMTPTestConnection:
    def factory() -> Maildir:
        handler = Editing(str(path), fsync=False, **options)
        if edit is not None:
            handler.edit = edit  # type: ignore[method-assign]
        return handler

    conn = SMTPTestConnection(factory)
    assert conn.command("EHLO client.example").code == 250
    return conn


def _send(
    conn: SMTPTestConnection,
    recipients: tuple[str, ...] = ("carol@example.net",),
    message: bytes = MESSAGE,
) -> Any:
    assert conn.command("MAIL FROM:<alice@example.org>").code == 250
    for rcpt in recipients:
        assert conn.command(f"RCPT TO:<{rcpt}>").code == 250
    return conn.sendMessage(message)


def _stored(path: Path, sub: str = "new") -> dict[bytes, tuple[bytes, bytes]]:
    """
    Each stored copy by its Delivered-To address: (delivery headers,
    message after the Received: header).
    """
    copies = {}
    for file in maildirFiles(path, sub):
        delivery, rest = splitDelivery(file.read_bytes())
        to = delivery.split(b"Delivered-To: ")[1].split(b"\r\n")[0]
        copies[to] = (delivery, splitReceived(rest)[1])
    return copies


def test_everyModification(tmp_path: Path) -> None:
    """
    Headers added, inserted, changed (with folding) and deleted, the body
    replaced by a stream, the sender changed, a recipient added and one
    deleted: each remaining recipient's copy is exactly the modified
    message, unchanged header lines byte for byte.
    """

    def edit(changes: Any) -> None:
        changes.addHeader("X-Added", "yes")
        changes.insertHeader(0, "X-First", "top")
        changes.changeHeader("subject", "changed\n\tover two lines")
        changes.deleteHeader("To")
        changes.replaceBody(iter([b"new body\r\n", b"second line\r\n"]))
        changes.changeSender("bounces@example.org")
        changes.addRecipient("dave@example.net")
        changes.deleteRecipient("CAROL@example.net")

    conn = _connect(tmp_path, edit)
    reply = _send(conn, ("carol@example.net", "bob@example.net"))
    assert reply.code == 250
    expected = (
        b"X-First: top\r\n"
        b"From: Alice <alice@example.org>\r\n"
        b"subject: changed\r\n\tover two lines\r\n"
        b"X-Keep:   spaced  \r\n"
        b"X-Added: yes\r\n"
        b"\r\n"
        b"new body\r\n"
        b"second line\r\n"
    )
    copies = _stored(tmp_path)
    assert sorted(copies) == [b"bob@example.net", b"dave@example.net"]
    for address, (delivery, message) in copies.items():
        assert delivery == (
            b"Return-Path: <bounces@example.org>\r\n"
            b"X-Original-To: %s\r\nDelivered-To: %s\r\n" % (address, address)
        )
        assert message == expected
    assert maildirFiles(tmp_path, "tmp") == []


def test_headersOnlyKeepsBody(tmp_path: Path) -> None:
    """
    A header change alone rewrites the header section; the body is the one
    received, byte for byte.
    """
    body = b"line\r\n" * 20000 + b"\xff last\r\n"
    message = b"Subject: s\r\n\r\n" + body
    conn = _connect(tmp_path, lambda c: c.addHeader("X-Scanned", "clean"))
    assert _send(conn, message=message).code == 250
    ((_, stored),) = _stored(tmp_path).values()
    assert stored == b"Subject: s\r\nX-Scanned: clean\r\n\r\n" + body


def test_bodyFromFile(tmp_path: Path) -> None:
    """
    A replacement body given as a binary file is read from its position.
    """
    source = io.BytesIO(b"skipped|the new body\r\n")
    source.seek(8)
    conn = _connect(tmp_path, lambda c: c.replaceBody(source))
    assert _send(conn).code == 250
    ((_, stored),) = _stored(tmp_path).values()
    assert stored == MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\nthe new body\r\n"


def test_envelopeOnlyKeepsContent(tmp_path: Path) -> None:
    """
    A new sender and recipient change only the delivery headers.
    """

    def edit(changes: Any) -> None:
        changes.changeSender("")
        changes.deleteRecipient("carol@example.net")
        changes.addRecipient("erin@example.net")

    conn = _connect(tmp_path, edit)
    assert _send(conn).code == 250
    assert _stored(tmp_path) == {
        b"erin@example.net": (
            b"Return-Path: <>\r\n"
            b"X-Original-To: erin@example.net\r\nDelivered-To: erin@example.net\r\n",
            MESSAGE,
        )
    }


def test_everyRecipientDeleted(tmp_path: Path) -> None:
    """
    With every recipient deleted nothing is stored, and the message is
    taken (the handler chose to deliver it to no one).
    """
    conn = _connect(tmp_path, lambda c: c.deleteRecipient("carol@example.net"))
    assert _send(conn).code == 250
    assert maildirFiles(tmp_path, "new") == []
    assert maildirFiles(tmp_path, "tmp") == []


def test_quarantine(tmp_path: Path) -> None:
    """
    A quarantined message goes to the .Quarantine Maildir++ folder (made
    when first needed), first header the reason; nothing in new/.
    """
    conn = _connect(tmp_path, lambda c: c.quarantineMessage("virus\nfound"))
    assert _send(conn).code == 250
    assert maildirFiles(tmp_path, "new") == []
    folder = tmp_path / ".Quarantine"
    assert (folder / "maildirfolder").is_file()
    assert (folder / "cur").is_dir()
    (path,) = maildirFiles(folder, "new")
    data = path.read_bytes()
    assert data.startswith(
        b"X-Esmtpkit-Quarantine: virus\r\n found\r\n"
        b"Return-Path: <alice@example.org>\r\n"
    )
    assert splitReceived(splitDelivery(data)[1])[1] == MESSAGE
    assert maildirFiles(tmp_path, "tmp") == []


# -- a full disk ---------------------------------------------------------------


class FullDisk:
    """
    Makes the file system of one folder hold only C{room} more bytes:
    C{os.write} and C{os.sendfile} to files in it fail with ENOSPC past
    that; C{os.open} of a new file there fails once C{room} is 0;
    C{os.statvfs} of it tells C{room}.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path, room: int):
        self.folder = str(folder)
        self.room = room
        self._write, self._sendfile, self._open = os.write, os.sendfile, os.open
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "sendfile", self.sendfile)
        monkeypatch.setattr(os, "open", self.open)
        self._statvfs = os.statvfs
        monkeypatch.setattr(os, "statvfs", self.statvfs)

    def _ours(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self.folder)
        except OSError:
            return False

    def _take(self, fd: int, size: int) -> None:
        if self._ours(fd):
            if size > self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= size

    def write(self, fd: int, data: Any) -> int:
        self._take(fd, len(data))
        return self._write(fd, data)

    def sendfile(self, out: int, source: int, offset: Any, count: int) -> int:
        size = min(count, max(os.fstat(source).st_size - (offset or 0), 0))
        self._take(out, size)
        return self._sendfile(out, source, offset, count)

    def statvfs(self, path: Any) -> Any:
        real = self._statvfs(path)
        if not str(path).startswith(self.folder):
            return real
        return SimpleNamespace(
            f_bavail=self.room,
            f_frsize=1,
            f_files=real.f_files,
            f_favail=real.f_favail,
        )

    def open(self, path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if str(path).startswith(self.folder) and flags & os.O_CREAT and not self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._open(path, flags, *args, **kw)


def _copySize(path: Path, conn: SMTPTestConnection) -> int:
    """
    The size of one stored copy of L{MESSAGE} (delivered, then removed).
    """
    assert _send(conn).code == 250
    (file,) = maildirFiles(path, "new")
    size = file.stat().st_size
    file.unlink()
    return size


def _assertNothingLeft(path: Path) -> None:
    assert maildirFiles(path, "tmp") == []
    assert maildirFiles(path, "new") == []


def _assertFull(reply: Any) -> None:
    assert (reply.code, reply.enhanced) == (452, "4.3.1"), reply


def test_fullAtData(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    No room for a new file: DATA gets 452 4.3.1; the transaction stays
    open and DATA works once there is room again.
    """
    conn = _connect(tmp_path)
    disk = FullDisk(monkeypatch, tmp_path, 0)
    assert conn.command("MAIL FROM:<alice@example.org>").code == 250
    assert conn.command("RCPT TO:<carol@example.net>").code == 250
    _assertFull(conn.command("DATA"))
    _assertNothingLeft(tmp_path)
    disk.room = 10**6
    assert conn.sendMessage(MESSAGE).code == 250
    assert len(maildirFiles(tmp_path, "new")) == 1


def test_roomForTheDeclaredSize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Less room than the SIZE the client declared: DATA gets 452 4.3.1 at
    once (the client keeps its message); a smaller declared size is taken.
    """
    conn = _connect(tmp_path)
    FullDisk(monkeypatch, tmp_path, 5000)
    assert conn.command("MAIL FROM:<alice@example.org> SIZE=6000").code == 250
    assert conn.command("RCPT TO:<carol@example.net>").code == 250
    _assertFull(conn.command("DATA"))
    _assertNothingLeft(tmp_path)
    assert conn.command("RSET").code == 250
    assert conn.command("MAIL FROM:<alice@example.org> SIZE=100").code == 250
    assert conn.command("RCPT TO:<carol@example.net>").code == 250
    assert conn.command("DATA").code == 354


@pytest.mark.parametrize("room", [10, 300, 40000])
def test_fullWhileReceiving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    """
    The disk fills while the message is written (in its first headers, in
    its header section, in its body): 452 4.3.1 (at DATA, or after the
    data), no file left, and the connection goes on.
    """
    conn = _connect(tmp_path)
    disk = FullDisk(monkeypatch, tmp_path, room)
    big = MESSAGE + b"more body\r\n" * 5000
    _assertFull(_send(conn, message=big))
    _assertNothingLeft(tmp_path)
    disk.room = 10**7
    assert conn.command("RSET").code == 250  # after a DATA refused
    assert _send(conn).code == 250


def test_fullAtSecondCopy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Room for the message once but not for the second recipient's copy:
    452 4.3.1 and no copy at all (all or nothing).
    """
    conn = _connect(tmp_path)
    disk = FullDisk(monkeypatch, tmp_path, _copySize(tmp_path, conn) + 10)
    _assertFull(_send(conn, ("carol@example.net", "bob@example.net")))
    assert disk.room < 50  # the first copy was written whole
    _assertNothingLeft(tmp_path)


def test_fullWhileRewriting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Room for the message as received, but not for its modified copy: 452
    4.3.1, no file left.
    """
    edits: list[Callable[[Any], None]] = []
    conn = _connect(tmp_path, lambda c: [edit(c) for edit in edits])
    disk = FullDisk(monkeypatch, tmp_path, _copySize(tmp_path, conn) + 10)
    edits.append(lambda c: c.replaceBody(b"x" * 5000))
    _assertFull(_send(conn))
    assert disk.room <= 10  # the message as received was written whole
    _assertNothingLeft(tmp_path)


def test_renameFails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The second copy cannot be moved into new/: the first one is taken back
    out, 452 4.3.1, nothing left.
    """
    conn = _connect(tmp_path)
    real = os.rename
    calls: Iterator[int] = iter(range(100))

    def rename(source: Any, target: Any) -> None:
        if next(calls) == 1:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        real(source, target)

    monkeypatch.setattr(os, "rename", rename)
    _assertFull(_send(conn, ("carol@example.net", "bob@example.net")))
    _assertNothingLeft(tmp_path)


# -- the Maildir agrees with the renderer --------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_fieldBytes, max_size=5),
    st.lists(_change, max_size=6),
    st.one_of(st.none(), st.lists(st.binary(max_size=300), max_size=4)),
    st.lists(st.sampled_from(["bob@example.net", "Carol@example.net"]), max_size=2),
    st.lists(st.sampled_from(["bob@example.net", "dave@example.net"]), max_size=2),
)
def test_storedAsRendered(
    fields: list[tuple[str, bytes]],
    changes: list[tuple],  # type: ignore[type-arg]
    body: list[bytes] | None,
    deleted: list[str],
    added: list[str],
) -> None:
    """
    Whatever the changes, each copy the Maildir stores (made with offsets
    into its spool file and kernel copies) is exactly what
    L{ModifiedMessage} renders from the message received, and the copies
    are for the recipients of the modified envelope.
    """
    raw = b"".join(data for _, data in fields) + b"\r\n"
    received = b"the body\r\n" * 3
    record = _record(changes)

    def edit(modifications: Any) -> None:
        modifications.headers[:] = record.headers
        if body is not None:
            modifications.replaceBody(iter(body))
        for address in deleted:
            modifications.deleteRecipient(address)
        for address in added:
            modifications.addRecipient(address)

    path = Path(tempfile.mkdtemp(prefix="esmtpkit-render-"))
    try:
        conn = _connect(path, edit)
        reply = _send(conn, ("carol@example.net", "bob@example.net"), raw + received)
        assert reply.code == 250
        expected = Transaction(id="T", sender="alice@example.org")
        expected.rawHeaders = raw
        expected.recipients.extend(
            [Recipient("carol@example.net"), Recipient("bob@example.net")]
        )
        edit(expected.modifications)
        message = ModifiedMessage(expected)
        rendered = b"".join(message.chunks(received))
        distinct: dict[str, bytes] = {}
        for recipient in message.envelope.recipients:
            distinct.setdefault(recipient.address.lower(), recipient.address.encode())
        copies = _stored(path)
        assert sorted(copies) == sorted(distinct.values())
        for _, content in copies.values():
            assert content == rendered
        assert maildirFiles(path, "tmp") == []
    finally:
        shutil.rmtree(path, ignore_errors=True)
