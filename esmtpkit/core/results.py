"""
What a message's end came to: one reply for the whole message, or one per
recipient.

An EOM hook may return L{PerRecipient} instead of a single reply. LMTP
(RFC 2033) answers the end of a message once per accepted recipient, so
there each recipient gets its own reply. SMTP has exactly one reply per
message (RFC 5321 section 4.1.1.4), so there a mixed result becomes one
reply by L{MessageResult.single}: every recipient accepted gives the first
acceptance; otherwise the first temporary failure (4xx) if there is one, so
the client tries the whole message again (RFC 5321 section 6.1 prefers a
duplicate to a loss), else the first permanent failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..reply import Reply, ReplyLike

if TYPE_CHECKING:
    from ..session import Recipient

__all__ = ["PerRecipient", "MessageResult"]


class PerRecipient:
    """
    An EOM result that answers each recipient on its own.

        return PerRecipient({"bob@example.org": (550, "5.1.1 No such user")})
        return PerRecipient([None, (451, "4.2.0 Mailbox busy"), None])

    @ivar replies: a reply for each recipient in RCPT order (a sequence as
        long as C{session.transaction.recipients}), or a mapping from
        recipient address to its reply; L{None}, and an address the mapping
        lacks, mean the default acceptance (or C{default}).
    @ivar default: the reply for recipients given none.
    """

    __slots__ = ("replies", "default")

    def __init__(
        self,
        replies: Sequence[ReplyLike | None] | Mapping[str, ReplyLike | None],
        default: ReplyLike | None = None,
    ) -> None:
        if isinstance(replies, (str, bytes)) or not isinstance(
            replies, (Sequence, Mapping)
        ):
            raise TypeError(f"{replies!r} is not a sequence or mapping of replies")
        self.replies = replies
        self.default = default

    def forRecipients(self, recipients: Sequence[Recipient]) -> list[ReplyLike | None]:
        """
        The reply-like value for each of C{recipients}, in order.

        @raise ValueError: a sequence of replies of the wrong length.
        """
        replies = self.replies
        if isinstance(replies, Mapping):
            values = [replies.get(r.address, self.default) for r in recipients]
        else:
            if len(replies) != len(recipients):
                raise ValueError(
                    f"{len(replies)} replies for {len(recipients)} recipients"
                )
            values = list(replies)
        return [self.default if value is None else value for value in values]

    def __repr__(self) -> str:
        return f"PerRecipient({self.replies!r}, default={self.default!r})"


class MessageResult:
    """
    The replies to the end of one message, one per accepted recipient (a
    message refused as a whole has the same reply for each).

    @ivar replies: the replies, in RCPT order.
    @ivar whole: the one reply they all are, when the message was answered
        as a whole; else L{None}.
    """

    __slots__ = ("replies", "whole")

    def __init__(self, replies: Sequence[Reply], whole: Reply | None = None) -> None:
        """
        @param whole: the reply that C{replies} all are, if they are one.
        """
        self.replies = replies if type(replies) is tuple else tuple(replies)
        self.whole = whole

    @classmethod
    def forAll(cls, reply: Reply, recipients: int) -> MessageResult:
        """
        The same C{reply} for each of C{recipients} (at least one).
        """
        return cls((reply,) * (recipients if recipients > 1 else 1), reply)

    @property
    def outcome(self) -> str:
        """
        C{"accepted"}, C{"partial"} or C{"refused"} (see
        L{esmtpkit.core.events.OUTCOMES}).
        """
        whole = self.whole
        if whole is not None:
            return "accepted" if whole.code // 100 == 2 else "refused"
        accepted = sum(1 for reply in self.replies if reply.code // 100 == 2)
        if accepted == len(self.replies):
            return "accepted"
        return "partial" if accepted else "refused"

    def single(self) -> Reply:
        """
        The one reply SMTP gives (see the module's docstring for the rule).
        """
        if self.whole is not None:
            return self.whole
        replies = self.replies
        if len(replies) == 1:
            return replies[0]
        refused = [reply for reply in replies if reply.code // 100 != 2]
        if not refused:
            return replies[0]
        for reply in refused:
            if reply.code // 100 == 4:
                return reply
        return refused[0]
