"""
A private Postfix that acknowledges a message once its queue file is on
disk: the durable peer of esmtpkit-maildir in the benchmark.

    python bench/peers/postfix_durable.py PORT STATS_FILE MESSAGE_SIZE_LIMIT

Writes a Postfix configuration of its own with tests/postfix.py's
L{PrivatePostfix} (a fresh folder under /tmp, smtpd on 127.0.0.1:PORT only,
mail for example.org to C{discard:}, the system Postfix never touched) and
runs C{postfix -c CONFDIR start-fg} as its child, so every Postfix process
is one of its descendants (the benchmark pins and measures that tree).
Postfix's cleanup fsyncs each queue file before smtpd sends the 250; that
default is kept.

On SIGTERM it waits until the queue is empty (every accepted message
delivered to C{discard:}), counts the deliveries in Postfix's log, stops
the instance (C{postfix stop}, then kills what is left, by PID), writes
C{{"messages": delivered, "queued": left in the queue, ...}} to STATS_FILE
as JSON and exits. Must run as root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.postfix import PrivatePostfix, postfixCommand  # noqa: E402

RECIPIENT = "sink@example.org"  # what smtp-source and the warm-up send to
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
DRAIN_TIMEOUT = 120.0


def queued(postfix: PrivatePostfix) -> int:
    """
    The number of queue files left in C{postfix}'s queues.
    """
    count = 0
    for name in QUEUES:
        for _, _, files in os.walk(postfix.queueDirectory / name):
            count += len(files)
    return count


def delivered(postfix: PrivatePostfix) -> int:
    """
    The messages delivered (C{status=sent}) to L{RECIPIENT}, by queue ID.
    """
    return len({d.queueId for d in postfix.deliveries(RECIPIENT) if d.status == "sent"})


def main() -> None:
    port, statsPath, sizeLimit = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
    postfix = PrivatePostfix(
        "discard:",
        port=port,
        # smtp-source's 10 MiB messages (C) exceed the default limit.
        extra={"message_size_limit": sizeLimit},
    )
    stats: dict[str, object] = {"messages": -1}
    try:
        postfix.writeConfiguration()
        postfix.started = True
        master = subprocess.Popen(
            [postfixCommand("postfix"), "-c", str(postfix.configDirectory), "start-fg"],
            stdin=subprocess.DEVNULL,
        )
        while not stopping.wait(0.1):
            if master.poll() is not None:
                sys.exit(f"postfix start-fg exited ({master.returncode})")
        began = time.monotonic()
        while queued(postfix) and time.monotonic() < began + DRAIN_TIMEOUT:
            time.sleep(0.05)
        stats["drain_seconds"] = time.monotonic() - began
        # The log lines travel to postlogd as datagrams: wait until the
        # count has stopped changing.
        count, settled = delivered(postfix), time.monotonic()
        while time.monotonic() < settled + 1.0:
            time.sleep(0.1)
            if (now := delivered(postfix)) != count:
                count, settled = now, time.monotonic()
        stats.update(messages=count, queued=queued(postfix))
        problems = [
            line
            for line in postfix.log().splitlines()
            if ": warning: " in line or ": fatal: " in line or ": panic: " in line
        ]
        stats["log_problems"] = problems[:20]
        for line in problems[:20]:
            print(f"postfix log: {line}", flush=True)
    finally:
        postfix.stop()
        statsPath.write_text(json.dumps(stats))
    master.wait(10)
    print(f"postfix: {json.dumps(stats)}", flush=True)


if __name__ == "__main__":
    main()
