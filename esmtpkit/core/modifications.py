"""
L{Modifications}: what a handler asks to change in a message at EOM.

A handler (or a milter esmtpkit calls) records changes on
C{session.transaction.modifications} from its EOM hook, before it answers:

    def EOM(self):
        changes = self.session.transaction.modifications
        changes.addHeader("X-Spam-Score", "3.2")
        changes.replaceBody(open("/tmp/cleaned", "rb"))
        changes.deleteRecipient("spamtrap@example.org")

The changes are kept in the order they were asked for. What applies them
depends on the face: stand-alone (SMTP, LMTP) the handler that delivers the
message (the built-in L{Maildir <esmtpkit.handlers.Maildir>}, the relay,
the webhook, the last handler of a chain) applies them before it stores or
forwards the message; as a milter they become the MTA's SMFIR_* actions.
The meaning of each change is the milter's, so both give the same message.

Header names and values are text as in L{Transaction.headers
<esmtpkit.session.Transaction.headers>}: a value is what follows the colon,
without the line ending; a folded value keeps its line breaks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ..session import Params

__all__ = [
    "BodySource",
    "HeaderChange",
    "Modifications",
    "declaresModifications",
    "modifiedBefore",
]

#: A replacement body: the body's bytes with CRLF line endings, streamed --
#: given whole, as an iterable of chunks, or as a binary file read from its
#: current position to its end.
BodySource = bytes | Iterable[bytes] | IO[bytes]


class HeaderChange(NamedTuple):
    """
    One header change.

    @ivar kind: C{"add"} (append C{name: value} after the last header),
        C{"insert"} (put it before the header at C{index}, 0 the first; an
        index past the end appends) or C{"change"} (replace the value of the
        C{index}-th header named C{name}, counting from 1 and ignoring case;
        a value of L{None} deletes that header; no such header: a deletion
        does nothing and a new value is added after the last header, as
        Sendmail and Postfix do with a milter's change).
    """

    kind: str
    name: str
    value: str | None
    index: int = 0


class Modifications:
    """
    The changes asked for one message, in order.

    @ivar headers: the header changes (L{HeaderChange}), in order.
    @ivar body: the replacement body, or L{None} to keep the body received.
    @ivar sender: the new envelope sender and its ESMTP parameters, or
        L{None}.
    @ivar added: recipients to add, C{(address, params)}, in order.
    @ivar deleted: recipient addresses to delete (compared without regard to
        case), in order.
    @ivar recipientChanges: the additions and deletions together, in the
        order they were asked for: C{("add", address, params)} or
        C{("delete", address, None)}. A deletion removes every recipient of
        that address known at that point, an added one included.
    @ivar quarantine: the reason the message is to be held, or L{None}.
    """

    __slots__ = (
        "headers",
        "body",
        "sender",
        "added",
        "deleted",
        "recipientChanges",
        "quarantine",
    )

    def __init__(self) -> None:
        self.headers: list[HeaderChange] = []
        self.body: BodySource | None = None
        self.sender: tuple[str, Params] | None = None
        self.added: list[tuple[str, Params]] = []
        self.deleted: list[str] = []
        self.recipientChanges: list[tuple[str, str, Params | None]] = []
        self.quarantine: str | None = None

    def __bool__(self) -> bool:
        return bool(
            self.headers
            or self.body is not None
            or self.sender is not None
            or self.added
            or self.deleted
            or self.quarantine is not None
        )

    def __repr__(self) -> str:
        parts = [
            f"{name}={getattr(self, name)!r}"
            for name in self.__slots__
            if name != "recipientChanges" and getattr(self, name) not in (None, [])
        ]
        return f"Modifications({', '.join(parts)})"

    def addHeader(self, name: str, value: str) -> None:
        """
        Add header C{name: value} after the last header.
        """
        self.headers.append(HeaderChange("add", _name(name), _value(value)))

    def insertHeader(self, index: int, name: str, value: str) -> None:
        """
        Insert header C{name: value} before the header at C{index} (0 makes
        it the first header).
        """
        if index < 0:
            raise ValueError(f"header index {index} is negative")
        self.headers.append(HeaderChange("insert", _name(name), _value(value), index))

    def changeHeader(self, name: str, value: str | None, index: int = 1) -> None:
        """
        Replace the value of the C{index}-th header called C{name} (1 the
        first, names compared without regard to case); L{None} deletes it.
        With fewer such headers, a deletion does nothing and a new value is
        added after the last header (what Sendmail and Postfix do).
        """
        if index < 1:
            raise ValueError(f"header occurrence {index} is not 1 or more")
        changed = None if value is None else _value(value)
        self.headers.append(HeaderChange("change", _name(name), changed, index))

    def deleteHeader(self, name: str, index: int = 1) -> None:
        """
        Delete the C{index}-th header called C{name} (1 the first).
        """
        self.changeHeader(name, None, index)

    def replaceBody(self, body: BodySource) -> None:
        """
        Replace the message body (everything after the empty line that ends
        the header section) with C{body}; streamed, never read whole unless
        given whole. The last call wins.
        """
        self.body = body

    def changeSender(self, address: str, params: Params | None = None) -> None:
        """
        Change the envelope sender (C{""} for the null sender) and its ESMTP
        parameters.
        """
        self.sender = (_address(address), params if params is not None else _noParams())

    def addRecipient(self, address: str, params: Params | None = None) -> None:
        """
        Add an envelope recipient with its ESMTP parameters.
        """
        added = (_address(address), params if params is not None else _noParams())
        self.added.append(added)
        self.recipientChanges.append(("add", *added))

    def deleteRecipient(self, address: str) -> None:
        """
        Delete an envelope recipient: every recipient of that address
        (compared without regard to case) accepted at RCPT or added before
        this call.
        """
        address = _address(address)
        self.deleted.append(address)
        self.recipientChanges.append(("delete", address, None))

    def quarantineMessage(self, reason: str) -> None:
        """
        Hold the message instead of delivering it, for C{reason}.
        """
        if not reason:
            raise ValueError("a quarantine needs a reason")
        self.quarantine = _value(reason)


def declaresModifications(handler: object) -> bool:
    """
    Whether C{handler} declares that its EOM may record modifications: its
    C{mayModify} attribute is true (a filter sets C{mayModify = True} on its
    class; a L{Chain <esmtpkit.handlers.Chain>} declares it when a member
    does). A delivering handler after it then holds the message back until
    EOM (the relay spools it) so that it can apply them.
    """
    return bool(getattr(handler, "mayModify", False))


def modifiedBefore(session: object) -> bool:
    """
    Whether a handler that runs EOM before the one whose C{session} this is
    (an earlier member of its chain, or of an enclosing chain) declares
    modifications (L{declaresModifications}); false outside a chain.
    """
    return bool(getattr(session, "modifiedBefore", False))


def _name(name: str) -> str:
    # RFC 5322 section 3.6.8: printable US-ASCII except the colon.
    if not name or any(not "!" <= c <= "~" or c == ":" for c in name):
        raise ValueError(f"{name!r} is not a header field name")
    return name


def _value(value: str) -> str:
    if "\0" in value:
        raise ValueError("a header value cannot hold a NUL")
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"{value!r} cannot be written as bytes") from None
    return value


def _address(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if any(c in address for c in "\0\r\n<>"):
        raise ValueError(f"{address!r} is not an address")
    return address


def _noParams() -> Params:
    from ..session import Params  # session imports this module

    return Params()
