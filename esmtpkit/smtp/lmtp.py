"""
L{LMTPProtocol}: the server side of one LMTP connection (RFC 2033).

LMTP is SMTP's commands with two differences: the client greets with LHLO
(HELO and EHLO are not commands), and the end of a message is answered once
per accepted recipient, in RCPT order, so a delivery agent can take a
message for some recipients and refuse or defer it for others. The handler
says which with a L{PerRecipient <esmtpkit.PerRecipient>} result from EOM;
any other result answers every recipient alike, and so does a message
refused as a whole (a size limit, a content hook that refused it).
"""

from __future__ import annotations

from ..core.results import MessageResult
from ..reply import Reply
from .protocol import ESMTPProtocol

__all__ = ["LMTPProtocol", "LMTP_SETTINGS"]

LMTP_SETTINGS = {"pipelining": True, "enhancedStatusCodes": True}
"""
The settings LMTP requires (RFC 2033 section 5: PIPELINING and
ENHANCEDSTATUSCODES are always offered).
"""

_USE_LHLO = Reply(500, "Error: this is LMTP, greet with LHLO", enhanced="5.5.1")


class LMTPProtocol(ESMTPProtocol):
    """
    One LMTP server connection, driving the same handlers as SMTP: LHLO
    asks the EHLO hook.
    """

    __slots__ = ()

    def connectionMade(self) -> None:
        self.session.lmtp = True
        self.conversation.perRecipient = True
        super().connectionMade()

    def do_LHLO(self, arg: str) -> None:
        self._hello("EHLO", arg, extended=True)

    def do_HELO(self, arg: str) -> None:
        self.writeReply(_USE_LHLO)

    def do_EHLO(self, arg: str) -> None:
        self.writeReply(_USE_LHLO)

    def messageDone(self, result: MessageResult) -> None:
        """
        One reply per recipient; the connection may close, and the error
        count grows by one, only after the last.
        """
        self._endMessage()
        replies = result.replies
        for reply in replies[:-1]:
            self.writeReply(reply, last=False)
        refused = any(reply.code >= 400 for reply in replies)
        closing = any(reply.code == 421 for reply in replies)
        final = replies[-1]
        if closing and final.code != 421:
            self.writeReply(final, last=False)
            self.close()
            return
        self.writeReply(final, count=refused)
