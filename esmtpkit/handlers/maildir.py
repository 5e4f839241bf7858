"""
L{Maildir}: deliver every message into a Maildir folder, as a local
delivery agent does.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import time
from collections.abc import Mapping
from typing import Any

from twisted.python.usage import UsageError

from ..core.rewrite import ModifiedMessage, formatHeader
from ..handler import ESMTPHandler
from ..received import receivedHeader
from ..reply import HookResult, ReplyError
from ..session import Recipient
from ..smtp.address import isValidMailbox
from .commit import Commit
from .delivery import (
    STORAGE_FAILED,
    MessageFiles,
    checkRoom,
    fsyncDirectory,
    log,
    logStorageError,
)
from .options import HandlerOptions

__all__ = ["Maildir", "QUARANTINE_HEADER", "originalRecipient"]

QUARANTINE_HEADER = "X-Esmtpkit-Quarantine"
"""The header, first in a quarantined message, that gives the reason."""

_counter = itertools.count()


_host = ""


def _uniqueName() -> str:
    # The Maildir naming scheme: time, microseconds, pid, a counter and
    # randomness, then the host name (the process's first look at it) with
    # "/" and ":" escaped.
    global _host
    if not _host:
        _host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    now = time.time()
    return (
        f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}"
        f"R{random.getrandbits(32):08x}.{_host}"
    )


def _headerAddress(address: str) -> str:
    # Addresses come from the client (or a handler): no control character
    # may reach a header line.
    if address.isprintable():
        return address
    return "".join("?" if not c.isprintable() else c for c in address)


def originalRecipient(recipient: Recipient, utf8: bool = False) -> str:
    """
    The address a recipient had before anyone rewrote it: that of its
    C{ORCPT} parameter (RFC 3461) when it is a valid C{rfc822} one, else
    its own.
    """
    orcpt = recipient.params.get("ORCPT") or ""
    kind, _, address = orcpt.partition(";")
    if kind.strip().lower() == "rfc822" and isValidMailbox(address.strip(), utf8):
        return address.strip()
    return recipient.address


class MaildirOptions(HandlerOptions):
    """
    The options of L{Maildir} (C{--handler-option key=value}).
    """

    optParameters = [
        ["path", None, None, "The Maildir folder (default: --maildir, else Maildir)."],
        [
            "quarantine-folder",
            None,
            ".Quarantine",
            "Sub-folder of quarantined messages.",
        ],
    ]
    optFlags = [
        ["no-fsync", None, "Do not flush messages to stable storage (unsafe)."],
        ["no-return-path", None, "Do not write a Return-Path: header."],
        ["no-delivered-to", None, "Do not write Delivered-To: headers."],
        ["no-original-to", None, "Do not write X-Original-To: headers."],
    ]

    def postOptions(self) -> None:
        folder = self["quarantine-folder"]
        if not folder or "/" in folder or folder in (".", "..", "tmp", "new", "cur"):
            raise UsageError(f"quarantine-folder {folder!r} is not a sub-folder name")


class Maildir(ESMTPHandler):
    """
    Delivers each message into a Maildir, as a local delivery agent does:
    a C{Return-Path:} header, then per recipient C{X-Original-To:} and
    C{Delivered-To:}, then a C{Received:} header, then the message exactly
    as received (or as the handler's L{modifications
    <esmtpkit.session.Transaction.modifications>} made it).

    The message streams into C{tmp/} as it arrives; at EOM it is flushed to
    disk, moved into C{new/} and the directory flushed before the 250, in
    a batch with the messages whose EOM came in the same moment (one
    thread's work, one flush of C{new/} for all: a group commit). With the
    per-recipient headers on, each recipient gets its own copy (one file
    each, as when an LDA delivers to several mailboxes), all moved into
    C{new/} together or not at all. A quarantined message goes to the
    C{.Quarantine} folder (a Maildir++ sub-folder) with the reason in an
    L{QUARANTINE_HEADER} header.

    A message that does not complete leaves nothing behind: not one
    aborted (ABORT, DISCONNECT), nor one whose EOM is cancelled while it is
    committed (a hook timeout, the shutdown deadline), which is then
    removed instead. A full disk or a folder that cannot be written gets
    C{452 4.3.1} and leaves no file either.
    """

    Options = MaildirOptions
    _prepared: set[str] = set()

    def __init__(
        self,
        path: str = "Maildir",
        fsync: bool = True,
        returnPath: bool = True,
        deliveredTo: bool = True,
        originalTo: bool = True,
        quarantineFolder: str = ".Quarantine",
    ) -> None:
        """
        @param path: the Maildir folder; it and its C{tmp}, C{new} and
            C{cur} sub-folders are created if missing.
        @param fsync: flush each message and C{new/} to stable storage
            before accepting it (in a thread, so the server goes on serving
            meanwhile). Without it all file work happens at once in EOM.
        @param returnPath: write C{Return-Path: <sender>} first.
        @param deliveredTo: write C{Delivered-To: recipient}; each recipient
            gets its own copy of the message.
        @param originalTo: write C{X-Original-To:} with the recipient's
            original address (its C{ORCPT}, else the address itself); each
            recipient gets its own copy of the message.
        @param quarantineFolder: the sub-folder (in C{path}) of quarantined
            messages, made when first needed.
        """
        self.path = os.path.abspath(path)
        self._tmpDir = os.path.join(self.path, "tmp")
        self.fsync = fsync
        self.returnPath = returnPath
        self.deliveredTo = deliveredTo
        self.originalTo = originalTo
        self.quarantineFolder = quarantineFolder
        self._files: MessageFiles | None = None
        self._commit: Commit | None = None
        if self.path not in self._prepared:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(self.path, sub), exist_ok=True)
            self._prepared.add(self.path)

    @classmethod
    def fromOptions(cls, options: Mapping[str, Any]) -> Any:
        """
        The handler factory for C{twistd esmtpkit} without
        C{--handler-option}: C{--maildir} names the folder.
        """
        return cls._factory(options.get("maildir") or "Maildir", {}, "--maildir")

    @classmethod
    def fromHandlerOptions(cls, options: MaildirOptions) -> Any:
        """
        The handler factory for C{--handler-option}: C{path=} (or the older
        spelling C{--maildir}) names the folder.
        """
        path = options["path"] or options.serverOptions.get("maildir") or "Maildir"
        keywords = {
            "fsync": not options["no-fsync"],
            "returnPath": not options["no-return-path"],
            "deliveredTo": not options["no-delivered-to"],
            "originalTo": not options["no-original-to"],
            "quarantineFolder": options["quarantine-folder"],
        }
        return cls._factory(path, keywords, "path")

    @classmethod
    def _factory(cls, path: str, keywords: dict[str, Any], what: str) -> Any:
        try:
            cls(path, **keywords)  # make the folders now: a bad path fails here
        except OSError as e:
            raise UsageError(f"{what} {path}: {e.strerror}") from None
        return lambda: cls(path, **keywords)

    @property
    def perRecipient(self) -> bool:
        """
        Whether each recipient gets its own copy (its own delivery headers).
        """
        return self.deliveredTo or self.originalTo

    def deliveryHeaders(
        self, sender: str, recipient: Recipient | None, quarantine: str | None = None
    ) -> bytes:
        """
        The headers this handler writes above the C{Received:} header of
        the copy for C{recipient} (L{None}: the one copy for all).
        """
        headers = []
        if quarantine is not None:
            headers.append(formatHeader(QUARANTINE_HEADER, quarantine))
        if self.returnPath:
            headers.append(formatHeader("Return-Path", f"<{_headerAddress(sender)}>"))
        if recipient is not None:
            utf8 = "SMTPUTF8" in self._mailParams()
            if self.originalTo:
                original = originalRecipient(recipient, utf8)
                headers.append(formatHeader("X-Original-To", _headerAddress(original)))
            if self.deliveredTo:
                address = _headerAddress(recipient.address)
                headers.append(formatHeader("Delivered-To", address))
        return b"".join(headers)

    def _mailParams(self) -> Mapping[str, Any]:
        transaction = self.session.transaction
        return transaction.mailParams if transaction is not None else {}

    def _storageError(self, error: OSError) -> ReplyError:
        transaction = self.session.transaction
        logStorageError(transaction.id if transaction else self.session.id, error)
        return ReplyError(STORAGE_FAILED)

    def DATA(self) -> HookResult:
        transaction = self.session.transaction
        assert transaction is not None
        self._discard()  # a DATA refused after this one started a file
        first = transaction.recipients[0] if self.perRecipient else None
        prefix = self.deliveryHeaders(transaction.sender, first)
        received = receivedHeader(self.session, transaction)
        declared = transaction.mailParams.get("SIZE") or ""
        try:
            # Room for the size the client declared, or for one more byte.
            checkRoom(self._tmpDir, int(declared) if declared.isdigit() else 1)
        except OSError as e:
            raise self._storageError(e) from None
        path = os.path.join(self._tmpDir, _uniqueName())
        self._files = MessageFiles(path, prefix, len(prefix) + len(received))
        self._write(prefix + received)
        return super().DATA()

    def _write(self, data: bytes) -> None:
        files = self._files
        assert files is not None
        try:
            files.write(data)
        except OSError as e:
            # No more content hooks come after this refusal: nothing stays.
            self._files = None
            files.closeAll()
            files.remove()
            raise self._storageError(e) from None

    def EOH(self) -> None:
        transaction = self.session.transaction
        assert self._files is not None and transaction is not None
        self._files.bodyOffset = self._files.headerOffset + len(transaction.rawHeaders)
        self._write(transaction.rawHeaders)

    def BODY(self, chunk: bytes) -> None:
        self._write(chunk)

    def EOM(self) -> HookResult:
        transaction = self.session.transaction
        files = self._files
        assert files is not None and transaction is not None
        self._files = None
        reply = super().EOM()
        message = ModifiedMessage(transaction)
        envelope = message.envelope
        recipients: list[Recipient | None]
        if self.perRecipient:
            recipients = list(_distinct(envelope.recipients))
        else:
            recipients = [None] if envelope.recipients else []
        if not recipients:
            log.info(
                "Maildir: {id}: every recipient was deleted; nothing stored",
                id=transaction.id,
            )
            files.closeAll()
            files.remove()
            return reply
        first = transaction.recipients[0] if self.perRecipient else None
        prefixes = [
            # The first copy's headers as made at DATA, when nothing changed.
            files.prefix
            if r is first
            and envelope.sender == transaction.sender
            and message.quarantine is None
            else self.deliveryHeaders(envelope.sender, r, message.quarantine)
            for r in recipients
        ]
        folder = self.path
        if message.quarantine is not None:
            folder = os.path.join(self.path, self.quarantineFolder)
        newDir = os.path.join(folder, "new")
        tmpDir = self._tmpDir

        def build() -> None:
            if message.quarantine is not None:
                self._makeFolder(folder)
            files.build(prefixes, message, lambda: os.path.join(tmpDir, _uniqueName()))

        if not self.fsync:
            try:
                build()
                files.closeAll()
                files.move(newDir)
            except OSError as e:
                files.closeAll()
                files.remove()
                logStorageError(transaction.id, e)
                return STORAGE_FAILED
            return reply
        commit = self._commit = Commit(files, build, newDir, transaction.id)
        return commit.start(reply)

    def _makeFolder(self, folder: str) -> None:
        # A Maildir++ sub-folder: tmp/, new/, cur/ and the maildirfolder
        # marker; its entries flushed so that it survives a crash.
        if os.path.isdir(os.path.join(folder, "new")):
            return
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        marker = os.path.join(folder, "maildirfolder")
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
        if self.fsync:
            fsyncDirectory(folder)
            fsyncDirectory(os.path.dirname(folder))

    def ABORT(self) -> HookResult:
        return self._discard()

    def DISCONNECT(self) -> HookResult:
        return self._discard()

    def _discard(self) -> Any:
        files, self._files = self._files, None
        if files is not None:
            files.closeAll()
            files.remove()
        commit, self._commit = self._commit, None
        if commit is not None and not commit.finished:
            # An EOM whose answer was not taken (cancelled): wait until its
            # work is over and the files are gone.
            return commit.wait()
        return None


def _distinct(recipients: tuple[Recipient, ...]) -> list[Recipient]:
    # One copy per address (compared without regard to case), as an LDA
    # delivers once per mailbox.
    seen: set[str] = set()
    kept = []
    for recipient in recipients:
        key = recipient.address.casefold()
        if key not in seen:
            seen.add(key)
            kept.append(recipient)
    return kept
