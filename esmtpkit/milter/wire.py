"""
The milter protocol's packets and constants (the protocol of Sendmail's
libmilter, version 6, also spoken by Postfix).

Every packet is a 4-octet big-endian length, then a command octet, then
C{length - 1} octets of data. Strings inside the data end with a NUL.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

__all__ = [
    "MilterProtocolError",
    "PacketReader",
    "packet",
    "strings",
    "splitStrings",
    "encodeNegotiation",
    "decodeNegotiation",
    "encodeMacros",
    "decodeMacros",
]

# -- commands, MTA to milter (SMFIC_*) -------------------------------------
ABORT = b"A"
BODY = b"B"
CONNECT = b"C"
MACRO = b"D"
BODYEOB = b"E"
HELO = b"H"
QUIT_NC = b"K"
HEADER = b"L"
MAIL = b"M"
EOH = b"N"
OPTNEG = b"O"
QUIT = b"Q"
RCPT = b"R"
DATA = b"T"
UNKNOWN = b"U"

# -- replies, milter to MTA (SMFIR_*) --------------------------------------
ADDRCPT = b"+"
DELRCPT = b"-"
ADDRCPT_PAR = b"2"
SHUTDOWN = b"4"
ACCEPT = b"a"
REPLBODY = b"b"
CONTINUE = b"c"
DISCARD = b"d"
CHGFROM = b"e"
CONN_FAIL = b"f"
ADDHEADER = b"h"
INSHEADER = b"i"
SETSYMLIST = b"l"
CHGHEADER = b"m"
PROGRESS = b"p"
QUARANTINE = b"q"
REJECT = b"r"
SKIP = b"s"
TEMPFAIL = b"t"
REPLYCODE = b"y"

#: The replies that end the MTA's wait for an answer to a command.
FINAL_REPLIES = frozenset(
    (ACCEPT, CONTINUE, DISCARD, REJECT, TEMPFAIL, REPLYCODE, SKIP, CONN_FAIL, SHUTDOWN)
)
#: The replies allowed only in answer to end of body, before its final one.
MODIFICATIONS = frozenset(
    (
        ADDRCPT,
        DELRCPT,
        ADDRCPT_PAR,
        REPLBODY,
        CHGFROM,
        ADDHEADER,
        INSHEADER,
        CHGHEADER,
        QUARANTINE,
    )
)

# -- actions the milter may take (SMFIF_*) ---------------------------------
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100
SMFIF_ALL = 0x1FF

# -- protocol steps (SMFIP_*) ----------------------------------------------
SMFIP_NOCONNECT = 0x01
SMFIP_NOHELO = 0x02
SMFIP_NOMAIL = 0x04
SMFIP_NORCPT = 0x08
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000
SMFIP_MDS_256K = 0x10000000
SMFIP_MDS_1M = 0x20000000

#: The "no such step" flag and the "no reply" flag of each command that has
#: them (HEADER's no-reply flag is SMFIP_NR_HDR).
STEP_FLAGS: dict[bytes, tuple[int, int]] = {
    CONNECT: (SMFIP_NOCONNECT, SMFIP_NR_CONN),
    HELO: (SMFIP_NOHELO, SMFIP_NR_HELO),
    MAIL: (SMFIP_NOMAIL, SMFIP_NR_MAIL),
    RCPT: (SMFIP_NORCPT, SMFIP_NR_RCPT),
    DATA: (SMFIP_NODATA, SMFIP_NR_DATA),
    HEADER: (SMFIP_NOHDRS, SMFIP_NR_HDR),
    EOH: (SMFIP_NOEOH, SMFIP_NR_EOH),
    BODY: (SMFIP_NOBODY, SMFIP_NR_BODY),
    UNKNOWN: (SMFIP_NOUNKNOWN, SMFIP_NR_UNKN),
}

# -- macro stages (SMFIM_*), the order of a SETSYMLIST wish list -----------
SMFIM_CONNECT = 0
SMFIM_HELO = 1
SMFIM_ENVFROM = 2
SMFIM_ENVRCPT = 3
SMFIM_DATA = 4
SMFIM_EOM = 5
SMFIM_EOH = 6
#: The command whose macros each stage's wish list names.
STAGE_COMMANDS = {
    SMFIM_CONNECT: CONNECT,
    SMFIM_HELO: HELO,
    SMFIM_ENVFROM: MAIL,
    SMFIM_ENVRCPT: RCPT,
    SMFIM_DATA: DATA,
    SMFIM_EOM: BODYEOB,
    SMFIM_EOH: EOH,
}

#: The protocol version esmtpkit speaks; it accepts an MTA's 2 to 6.
VERSION = 6
MIN_VERSION = 2

#: The largest BODY chunk an MTA sends without SMFIP_MDS_* (and the largest
#: REPLBODY chunk we send).
MAX_BODY_CHUNK = 65535
#: The largest packet accepted by default: a body chunk of the largest size
#: negotiable (1 MiB) with room to spare. A longer length is a protocol
#: error, not an allocation.
MAX_PACKET = 1024 * 1024 + 64

# -- connect families --------------------------------------------------------
FAMILY_UNKNOWN = b"U"
FAMILY_UNIX = b"L"
FAMILY_INET = b"4"
FAMILY_INET6 = b"6"

_LENGTH = struct.Struct("!I")
_NEGOTIATION = struct.Struct("!III")
_INDEX = struct.Struct("!I")


class MilterProtocolError(Exception):
    """
    The peer broke the milter protocol (a packet too long or empty, an
    unknown command, data that does not parse).
    """


def packet(command: bytes, data: bytes = b"") -> bytes:
    """
    The packet for C{command} with C{data}.
    """
    return _LENGTH.pack(len(data) + 1) + command + data


def strings(*parts: bytes | str) -> bytes:
    """
    C{parts}, each ended with a NUL (text as UTF-8).
    """
    return b"".join(
        (p.encode("utf-8", "surrogateescape") if isinstance(p, str) else p) + b"\0"
        for p in parts
    )


def splitStrings(data: bytes, count: int | None = None) -> list[bytes]:
    """
    The NUL-ended strings of C{data}.

    @param count: how many there must be, if fixed.
    @raise MilterProtocolError: C{data} does not end with a NUL, or holds a
        different number of strings.
    """
    if not data.endswith(b"\0"):
        raise MilterProtocolError(f"string data {data[:40]!r} does not end in NUL")
    parts = data[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise MilterProtocolError(f"{len(parts)} strings where {count} belong")
    return parts


def encodeNegotiation(
    version: int,
    actions: int,
    protocol: int,
    macros: dict[int, Sequence[str]] | None = None,
) -> bytes:
    """
    The data of an OPTNEG packet; C{macros} (milter to MTA only, version 6)
    maps a stage (C{SMFIM_*}) to the macro names wished for there.
    """
    data = _NEGOTIATION.pack(version, actions, protocol)
    for stage, names in sorted((macros or {}).items()):
        data += _INDEX.pack(stage) + strings(" ".join(names))
    return data


def decodeNegotiation(data: bytes) -> tuple[int, int, int, dict[int, list[str]]]:
    """
    C{(version, actions, protocol, macros)} from the data of an OPTNEG
    packet.
    """
    if len(data) < _NEGOTIATION.size:
        raise MilterProtocolError(f"negotiation of {len(data)} octets")
    version, actions, protocol = _NEGOTIATION.unpack_from(data)
    macros: dict[int, list[str]] = {}
    rest = data[_NEGOTIATION.size :]
    while rest:
        if len(rest) < _INDEX.size + 1:
            raise MilterProtocolError("truncated macro list in negotiation")
        (stage,) = _INDEX.unpack_from(rest)
        end = rest.find(b"\0", _INDEX.size)
        if end < 0:
            raise MilterProtocolError("macro list without NUL in negotiation")
        names = rest[_INDEX.size : end].decode("ascii", "replace")
        macros[stage] = [n for n in names.replace(",", " ").split() if n]
        rest = rest[end + 1 :]
    return version, actions, protocol, macros


def encodeMacros(command: bytes, macros: dict[str, str]) -> bytes:
    """
    The data of a MACRO packet giving C{macros} for C{command}.
    """
    parts: list[str] = []
    for name, value in macros.items():
        parts += [name, value]
    return command + strings(*parts)


def decodeMacros(data: bytes) -> tuple[bytes, dict[str, str]]:
    """
    C{(command, macros)} from the data of a MACRO packet. Names are given
    as sent (C{j}, C{{daemon_name}}); values decoded as UTF-8 with
    surrogate escapes.

    @raise MilterProtocolError: no command, or an odd number of strings.
    """
    if not data:
        raise MilterProtocolError("macro packet without a command")
    command, rest = data[:1], data[1:]
    if not rest:
        return command, {}
    parts = splitStrings(rest)
    if len(parts) % 2:
        raise MilterProtocolError(f"macro list of {len(parts)} strings (odd)")
    text = [p.decode("utf-8", "surrogateescape") for p in parts]
    return command, dict(zip(text[0::2], text[1::2], strict=True))


def encodeIndexed(index: int, *parts: bytes | str) -> bytes:
    """
    An index (CHGHEADER, INSHEADER) followed by NUL-ended strings.
    """
    return _INDEX.pack(index) + strings(*parts)


def decodeIndexed(data: bytes, count: int) -> tuple[int, list[bytes]]:
    """
    C{(index, strings)} of a CHGHEADER or INSHEADER packet.
    """
    if len(data) < _INDEX.size:
        raise MilterProtocolError("indexed packet too short")
    (index,) = _INDEX.unpack_from(data)
    return index, splitStrings(data[_INDEX.size :], count)


class PacketReader:
    """
    Cuts a byte stream into C{(command, data)} packets.

    @ivar maxLength: the longest packet accepted (its length field).
    """

    __slots__ = ("_buffer", "maxLength")

    def __init__(self, maxLength: int = MAX_PACKET) -> None:
        self._buffer = bytearray()
        self.maxLength = maxLength

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        """
        Add C{data}; yield each packet now complete.

        @raise MilterProtocolError: a length of 0 or over L{maxLength}
            (nothing more can be read from this stream).
        """
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            (length,) = _LENGTH.unpack_from(buffer)
            if length == 0 or length > self.maxLength:
                raise MilterProtocolError(
                    f"packet length {length} (at most {self.maxLength})"
                )
            if len(buffer) < 4 + length:
                return
            command = bytes(buffer[4:5])
            body = bytes(buffer[5 : 4 + length])
            del buffer[: 4 + length]
            yield command, body

    @property
    def pending(self) -> int:
        """
        The number of octets of an incomplete packet held.
        """
        return len(self._buffer)
