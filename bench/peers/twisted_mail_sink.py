"""
A twisted.mail ESMTP server that accepts every message and drops its lines:
the twisted.mail peer of the benchmark.

    python bench/peers/twisted_mail_sink.py PORT [STATS_FILE [BACKLOG]]

Listens on 127.0.0.1:PORT, with a listen backlog of BACKLOG (default 1024).
On shutdown (SIGTERM/SIGINT) it writes the number of messages it completed
and the bytes of their lines to STATS_FILE as JSON, so the benchmark can
check that what the clients were told was delivered really arrived.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import defer, reactor
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.mail import smtp
from zope.interface import implementer


class Stats:
    messages = 0
    lineBytes = 0


@implementer(smtp.IMessage)
class DroppedMessage:
    """
    A message whose lines are counted and thrown away.
    """

    def __init__(self) -> None:
        self.size = 0

    def lineReceived(self, line: bytes) -> None:
        self.size += len(line)

    def eomReceived(self) -> defer.Deferred[None]:
        Stats.messages += 1
        Stats.lineBytes += self.size
        return defer.succeed(None)

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class DropDelivery:
    """
    Accepts every sender and recipient.
    """

    def receivedHeader(self, helo, origin, recipients):  # type: ignore[no-untyped-def]
        return b"Received: from " + (helo[0] or b"unknown") + b" by twisted-mail-sink"

    def validateFrom(self, helo, origin):  # type: ignore[no-untyped-def]
        return origin

    def validateTo(self, user):  # type: ignore[no-untyped-def]
        return DroppedMessage


class QuietESMTP(smtp.ESMTP):
    noisy = False  # no log line per message


class DropFactory(smtp.SMTPFactory):
    protocol = QuietESMTP
    domain = b"twisted-mail-sink"

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        p = super().buildProtocol(addr)
        p.delivery = DropDelivery()
        return p


def main() -> None:
    port = int(sys.argv[1])
    statsFile = sys.argv[2] if len(sys.argv) > 2 else None
    backlog = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
    # Log warnings and errors only (to stderr), so nothing piles up in memory.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )

    def writeStats() -> None:
        if statsFile:
            with open(statsFile, "w") as f:
                json.dump({"messages": Stats.messages, "lineBytes": Stats.lineBytes}, f)

    reactor.addSystemEventTrigger("before", "shutdown", writeStats)
    reactor.listenTCP(port, DropFactory(), interface="127.0.0.1", backlog=backlog)
    reactor.run()


if __name__ == "__main__":
    main()
