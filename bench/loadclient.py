"""
The benchmark's own SMTP load client (asyncio), for what smtp-source cannot
do. Each mode talks to one server on 127.0.0.1:PORT, checks every reply it
gets, and prints JSON lines on stdout: progress events that bench.py waits
for, then one line with "event": "result".

Modes:
  pipeline    transactions pipelined by the rules of RFC 2920 (scenario F):
              MAIL, RCPT and DATA in one write; after the 354, the message
              content, its ".", and the next MAIL, RCPT and DATA in one write
  bdat        several whole transactions per write with CHUNKING (scenario
              F2): MAIL, RCPT, "BDAT n LAST" and the n bytes, 10 times over
  stream      CLIENTS connections stream one big message each, all at once
              (scenario D); waits for "go" on stdin between DATA and the body
  idle        hold CONNECTIONS idle connections, then run PROBES transactions
              and time them (scenario E); waits for "probe" and "close"
  slowreader  pipe a flood of RSET commands (which RFC 2920 lets appear
              anywhere in a group) and read none of the replies for a while,
              then read them all, at most --read-rate replies a second
              (scenario H); waits for "read"
  tls         transactions over STARTTLS (scenario G)

Every mode stops by itself at --timeout seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

HOST = "127.0.0.1"
SENDER = b"bench@example.org"
RECIPIENT = b"sink@example.org"
LINE = b"x" * 78 + b"\r\n"  # one 80-byte body line; never needs dot-stuffing


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def command(what: str) -> None:
    """
    Wait for one line from bench.py on stdin.
    """
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != what:
        raise ProtocolFailure(f"expected {what!r} on stdin, got {line!r}")


class ProtocolFailure(Exception):
    """
    The server said something other than what the scenario expects.
    """


def message(size: int) -> bytes:
    """
    A message of headers plus a body of about C{size} bytes of 80-byte lines,
    with the terminating "." line.
    """
    headers = (
        b"From: <" + SENDER + b">\r\nTo: <" + RECIPIENT + b">\r\n"
        b"Subject: benchmark\r\n\r\n"
    )
    return headers + LINE * max(1, size // len(LINE)) + b".\r\n"


async def readReply(reader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    """
    One reply, possibly multi-line: (code, lines).
    """
    lines: list[bytes] = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise ProtocolFailure(f"connection closed mid-reply after {lines!r}")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), lines


async def expect(reader: asyncio.StreamReader, codes: tuple[int, ...]) -> list[bytes]:
    code, lines = await readReply(reader)
    if code not in codes:
        raise ProtocolFailure(f"expected {codes}, got {b''.join(lines)!r}")
    return lines


class Replies:
    """
    Reads replies from a connection in chunks and checks a whole group of
    them at once, each against the codes allowed at its place.
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffered = b""
        self.lines: list[bytes] = []  # complete lines not yet consumed

    async def expect(self, group: list[tuple[int, ...]], what: str) -> None:
        """
        Read len(C{group}) replies; reply i must have a code in group[i].
        """
        for place, codes in enumerate(group):
            while True:
                while not self.lines:
                    chunk = await self.reader.read(65536)
                    if not chunk:
                        raise ProtocolFailure(
                            f"connection closed awaiting reply {place} of {what}"
                        )
                    self.lines = (self.buffered + chunk).split(b"\r\n")
                    self.buffered = self.lines.pop()
                    self.lines.reverse()  # pop() from the end = next line
                line = self.lines.pop()
                if line[3:4] != b"-":  # the last line of a reply
                    break
            if not line[:3].isdigit() or int(line[:3]) not in codes:
                raise ProtocolFailure(
                    f"reply {place} of {what}: expected {codes}, got {line!r}"
                )


async def connect(
    port: int, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]]:
    """
    Connect, read the greeting, say EHLO; return the EHLO reply lines.
    """
    if rcvbuf:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    else:
        reader, writer = await asyncio.open_connection(HOST, port)
    await expect(reader, (220,))
    writer.write(b"EHLO bench.example.org\r\n")
    ehlo = await expect(reader, (250,))
    return reader, writer, ehlo


def keywords(ehlo: list[bytes]) -> set[str]:
    return {
        line[4:].split()[0].decode().upper() for line in ehlo[1:] if line[4:].split()
    }


async def transaction(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> None:
    """
    One transaction, waiting for each reply (no pipelining).
    """
    writer.write(b"MAIL FROM:<" + SENDER + b">\r\n")
    await expect(reader, (250,))
    writer.write(b"RCPT TO:<" + RECIPIENT + b">\r\n")
    await expect(reader, (250, 251))
    writer.write(b"DATA\r\n")
    await expect(reader, (354,))
    writer.write(data)
    await expect(reader, (250,))


async def quit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"QUIT\r\n")
    await expect(reader, (221,))
    writer.close()


# -- F: pipelined transactions (RFC 2920) -----------------------------------

MAIL = b"MAIL FROM:<" + SENDER + b">\r\n"
RCPT = b"RCPT TO:<" + RECIPIENT + b">\r\n"
ENVELOPE_GROUP = [(250,), (250, 251), (354,)]  # MAIL, RCPT, DATA


async def pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """
    Each session sends MAIL, RCPT and DATA in one write and reads their three
    replies; then, after the 354, one write carries the message content, the
    "." that ends it, and the next transaction's MAIL, RCPT and DATA (RFC
    2920: DATA ends a group, and message content may begin one). So each
    write carries the end of one message and the envelope of the next, and
    no byte of content is sent before its 354.
    """
    envelope = MAIL + RCPT + b"DATA\r\n"
    content = message(args.size)
    nextGroup = [(250,)] + ENVELOPE_GROUP  # end of data, MAIL, RCPT, DATA
    remaining = args.messages
    acked = 0
    writes = 0
    advertised: set[str] = set()

    sessions = [await connect(args.port) for _ in range(args.sessions)]
    for _, _, ehlo in sessions:
        advertised |= keywords(ehlo)

    def take() -> bool:
        nonlocal remaining
        if remaining <= 0:
            return False
        remaining -= 1
        return True

    async def session(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal acked, writes
        replies = Replies(reader)
        if take():
            writer.write(envelope)
            writes += 1
            await replies.expect(ENVELOPE_GROUP, "the first envelope")
            while True:
                more = take()
                writer.write(content + envelope if more else content)
                writes += 1
                await writer.drain()
                if more:
                    await replies.expect(nextGroup, "end of data + next envelope")
                    acked += 1
                else:
                    await replies.expect([(250,)], "the last end of data")
                    acked += 1
                    break
        writer.write(b"QUIT\r\n")
        await replies.expect([(221,)], "QUIT")
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(session(r, w) for r, w, _ in sessions))
    elapsed = time.perf_counter() - start
    return {
        "acked": acked,
        "elapsed": elapsed,
        "writes": writes,
        "pipelining": "PIPELINING" in advertised,
        "bytes": acked * len(content),
    }


# -- F2: whole transactions per write with BDAT (RFC 3030) --------------------


async def bdat(args: argparse.Namespace) -> dict[str, Any]:
    """
    BATCH whole transactions per write: MAIL, RCPT, "BDAT n LAST" and the n
    bytes of the message, repeated. Legal pipelining (RFC 3030): a BDAT
    chunk carries its own length, so nothing waits on a 354. Every reply is
    checked: 250 for MAIL, 250/251 for RCPT, 250 for the BDAT LAST.
    """
    body = message(args.size)[: -len(b".\r\n")]  # no dot: BDAT counts bytes
    one = MAIL + RCPT + b"BDAT %d LAST\r\n" % len(body) + body
    perMessage = [(250,), (250, 251), (250,)]
    remaining = args.messages
    acked = 0
    advertised: set[str] = set()

    sessions = [await connect(args.port) for _ in range(args.sessions)]
    for _, _, ehlo in sessions:
        said = keywords(ehlo)
        if "CHUNKING" not in said:
            raise ProtocolFailure("no CHUNKING in the EHLO reply")
        advertised |= said

    async def session(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal remaining, acked
        replies = Replies(reader)
        while remaining > 0:
            count = min(args.batch, remaining)
            remaining -= count
            writer.write(one * count)  # several whole messages in one write
            await writer.drain()
            await replies.expect(perMessage * count, f"{count} BDAT transactions")
            acked += count
        writer.write(b"QUIT\r\n")
        await replies.expect([(221,)], "QUIT")
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(session(r, w) for r, w, _ in sessions))
    elapsed = time.perf_counter() - start
    return {
        "acked": acked,
        "elapsed": elapsed,
        "pipelining": "PIPELINING" in advertised,
        "bytes": acked * len(body),
    }


# -- D: many clients streaming one big message each ---------------------------


async def stream(args: argparse.Namespace) -> dict[str, Any]:
    chunk = LINE * (65536 // len(LINE))
    chunks, rest = divmod(args.size, len(chunk))
    tail = LINE * max(1, rest // len(LINE)) + b".\r\n"
    headers = b"From: <" + SENDER + b">\r\nSubject: big\r\n\r\n"
    bodyBytes = len(headers) + chunks * len(chunk) + len(tail)

    async def prepare() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer, _ = await connect(args.port)
        writer.write(b"MAIL FROM:<" + SENDER + b">\r\n")
        await expect(reader, (250,))
        writer.write(b"RCPT TO:<" + RECIPIENT + b">\r\n")
        await expect(reader, (250, 251))
        writer.write(b"DATA\r\n")
        await expect(reader, (354,))
        return reader, writer

    clients = await asyncio.gather(*(prepare() for _ in range(args.clients)))
    emit("ready", clients=len(clients), inFlight=len(clients) * bodyBytes)
    await command("go")

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(headers)
        for _ in range(chunks):
            writer.write(chunk)
            await writer.drain()  # the server's backpressure reaches us here
        writer.write(tail)
        await expect(reader, (250,))
        await quit(reader, writer)

    start = time.perf_counter()
    await asyncio.gather(*(send(r, w) for r, w in clients))
    elapsed = time.perf_counter() - start
    return {
        "acked": len(clients),
        "elapsed": elapsed,
        "bytes": len(clients) * bodyBytes,
    }


# -- E: idle connections and probes ------------------------------------------


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    limit = asyncio.Semaphore(100)  # connect in waves, not a SYN flood

    async def hold() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with limit:
            reader, writer, _ = await connect(args.port)
            return reader, writer

    start = time.perf_counter()
    held = await asyncio.gather(*(hold() for _ in range(args.connections)))
    emit("idle-open", connections=len(held), seconds=time.perf_counter() - start)
    await command("probe")

    data = message(1024)
    latencies = []
    for _ in range(args.probes):
        began = time.perf_counter()
        reader, writer, _ = await connect(args.port)
        await transaction(reader, writer, data)
        latencies.append(time.perf_counter() - began)
        await quit(reader, writer)
    # A connection the server dropped meanwhile has seen end-of-file.
    await asyncio.sleep(0.05)
    dropped = sum(reader.at_eof() for reader, _ in held)
    emit("probes", latencies=latencies, dropped=dropped)
    await command("close")
    for _, writer in held:
        writer.close()
    return {
        "acked": len(latencies),
        "connections": len(held),
        "dropped": dropped,
        "latencies": latencies,
    }


# -- H: a slow reader ---------------------------------------------------------


async def slowreader(args: argparse.Namespace) -> dict[str, Any]:
    # A small receive buffer, so replies cannot hide in our kernel buffer.
    reader, writer, _ = await connect(args.port, rcvbuf=65536)
    # RSET may appear anywhere in a pipelined group (RFC 2920, 3.1); EHLO
    # may not, and a server that enforces the rule would end the flood.
    flood = b"RSET\r\n" * 1000
    batches = max(1, args.commands // 1000)
    written = 0

    async def write() -> None:
        nonlocal written
        for _ in range(batches):
            writer.write(flood)
            await writer.drain()
            written += 1000

    start = time.perf_counter()
    writing = asyncio.create_task(write())
    await asyncio.sleep(args.pause)  # read nothing meanwhile
    emit("stalled", commandsWritten=written, writerDone=writing.done())
    await command("read")
    replies = 0
    unread = Replies(reader)
    readStart = time.perf_counter()
    while replies < batches * 1000:
        await unread.expect([(250,)] * 1000, f"RSET replies {replies} on")
        replies += 1000
        if args.read_rate:  # a steady reader slower than the server
            ahead = readStart + replies / args.read_rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
    await writing
    elapsed = time.perf_counter() - start
    writer.write(b"QUIT\r\n")
    await unread.expect([(221,)], "QUIT")
    writer.close()
    return {"acked": replies, "commands": batches * 1000, "elapsed": elapsed}


# -- G: STARTTLS --------------------------------------------------------------


async def tls(args: argparse.Namespace) -> dict[str, Any]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the benchmark's self-signed certificate
    data = message(args.size)
    remaining = args.messages
    acked = 0

    async def session() -> None:
        nonlocal remaining, acked
        reader, writer, ehlo = await connect(args.port)
        if "STARTTLS" not in keywords(ehlo):
            raise ProtocolFailure("no STARTTLS in the EHLO reply")
        writer.write(b"STARTTLS\r\n")
        await expect(reader, (220,))
        await writer.start_tls(context)
        writer.write(b"EHLO bench.example.org\r\n")
        await expect(reader, (250,))
        while remaining > 0:
            remaining -= 1
            await transaction(reader, writer, data)
            acked += 1
        await quit(reader, writer)

    start = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(args.sessions)))
    return {"acked": acked, "elapsed": time.perf_counter() - start}


MODES: dict[str, Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "pipeline": pipeline,
    "bdat": bdat,
    "stream": stream,
    "idle": idle,
    "slowreader": slowreader,
    "tls": tls,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--messages", type=int, default=1)
    parser.add_argument("--batch", type=int, default=10, help="messages per write")
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--commands", type=int, default=30000)
    parser.add_argument("--pause", type=float, default=2.0)
    parser.add_argument(
        "--read-rate",
        type=float,
        default=0,
        help="slowreader: replies read per second after the pause (0: no limit)",
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    async def run() -> dict[str, Any]:
        return await asyncio.wait_for(MODES[args.mode](args), args.timeout)

    try:
        result = asyncio.run(run())
    except (TimeoutError, ProtocolFailure, OSError, asyncio.IncompleteReadError) as e:
        emit("result", error=f"{type(e).__name__}: {e}")
        sys.exit(2)
    emit("result", **result)


if __name__ == "__main__":
    main()
