"""
Option negotiation of the milter server face: what a handler needs from the
MTA, derived from the hooks it overrides.

The MTA offers a protocol version, the actions a milter may take (SMFIF_*)
and the protocol steps it can leave out or leave unanswered (SMFIP_*); the
milter answers with a subset of each, and (version 6) the macros it wants
at each stage. L{negotiate} makes that answer for a handler class:

  - a step whose hook the handler takes unchanged from L{ESMTPHandler
    <esmtpkit.ESMTPHandler>} and which brings nothing the session needs is
    left out (SMFIP_NODATA, SMFIP_NOEOH, SMFIP_NOBODY, SMFIP_NOUNKNOWN);
  - a step whose hook is unchanged but which fills the session (CONNECT,
    HELO, MAIL, RCPT, HEADER) is still sent, without a reply (SMFIP_NR_*),
    so that the handler's session and transaction are complete at EOM;
  - HEADER and EOH are never answered (their hooks cannot reply, only
    refuse the message, which is answered at the next body chunk or at the
    end of the body), unless the handler sets C{milterReplyToHeaders =
    True} to have a refusal answered at the header itself;
  - every modification action is declared, unless the handler names its
    own (C{milterActions}, a mask of C{SMFIF_*});
  - header values come with their leading space (SMFIP_HDR_LEADSPC), so
    the raw header section is the one the client sent;
  - SMFIP_SKIP is asked for when BODY is overridden (a BODY hook may return
    L{SKIP_BODY <esmtpkit.core.content.SKIP_BODY>});
  - the macros wished for (L{MACROS}, plus the handler's C{milterMacros},
    a mapping of stage name to macro names) are sent with SMFIF_SETSYMLIST.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..handler import ESMTPHandler
from . import wire

__all__ = ["Negotiated", "negotiate", "MACROS", "STAGES", "overridden"]

#: Stage names for C{milterMacros}, and the SMFIM_* index of each.
STAGES = {
    "connect": wire.SMFIM_CONNECT,
    "helo": wire.SMFIM_HELO,
    "mail": wire.SMFIM_ENVFROM,
    "rcpt": wire.SMFIM_ENVRCPT,
    "data": wire.SMFIM_DATA,
    "eoh": wire.SMFIM_EOH,
    "eom": wire.SMFIM_EOM,
}

#: The macros the face asks for at each stage: those the session is filled
#: from (see L{esmtpkit.milter.macros}).
MACROS: dict[int, tuple[str, ...]] = {
    wire.SMFIM_CONNECT: (
        "j",
        "{daemon_name}",
        "{daemon_addr}",
        "{daemon_port}",
        "_",
        "v",
    ),
    wire.SMFIM_HELO: ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}"),
    wire.SMFIM_ENVFROM: ("i", "{auth_type}", "{auth_authen}", "{mail_addr}"),
    wire.SMFIM_ENVRCPT: ("i", "{rcpt_addr}"),
    wire.SMFIM_DATA: ("i",),
    wire.SMFIM_EOH: ("i",),
    wire.SMFIM_EOM: ("i",),
}

#: The modification actions declared unless the handler says otherwise.
MODIFY_ACTIONS = (
    wire.SMFIF_ADDHDRS
    | wire.SMFIF_CHGBODY
    | wire.SMFIF_ADDRCPT
    | wire.SMFIF_DELRCPT
    | wire.SMFIF_CHGHDRS
    | wire.SMFIF_QUARANTINE
    | wire.SMFIF_CHGFROM
    | wire.SMFIF_ADDRCPT_PAR
)

# Steps that carry nothing the session needs: left out when their hook is
# the default one. (command, the hooks that would want it)
_OPTIONAL = (
    (wire.DATA, ("DATA",)),
    (wire.EOH, ("EOH",)),
    (wire.BODY, ("BODY",)),
    (wire.UNKNOWN, ("UNKNOWN",)),
)
# Steps that fill the session: not answered when their hook is the default.
_INFORMING = (
    (wire.CONNECT, ("CONNECT",)),
    (wire.HELO, ("HELO", "EHLO")),
    (wire.MAIL, ("MAIL",)),
    (wire.RCPT, ("RCPT",)),
    (wire.HEADER, ("HEADER",)),
)


def overridden(handlerClass: type, hook: str) -> bool:
    """
    Whether C{handlerClass} has its own C{hook} (a class that does not
    derive from L{ESMTPHandler} has all of its own).
    """
    if not issubclass(handlerClass, ESMTPHandler):
        return True
    return getattr(handlerClass, hook, None) is not getattr(ESMTPHandler, hook)


@dataclass(frozen=True)
class Negotiated:
    """
    What both sides agreed.

    @ivar version: the protocol version spoken (2 to 6).
    @ivar actions: the actions the milter may take (SMFIF_*).
    @ivar protocol: the steps left out or unanswered (SMFIP_*).
    @ivar macros: the macro names asked for, by stage (SMFIM_*).
    """

    version: int
    actions: int
    protocol: int
    macros: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def replies(self, command: bytes) -> bool:
        """
        Whether the MTA waits for a reply to C{command}.
        """
        if command in (wire.ABORT, wire.MACRO, wire.QUIT, wire.QUIT_NC):
            return False
        flags = wire.STEP_FLAGS.get(command)
        return flags is None or not self.protocol & flags[1]

    @property
    def leadingSpace(self) -> bool:
        """
        Whether header values keep the space after the colon, both ways.
        """
        return bool(self.protocol & wire.SMFIP_HDR_LEADSPC)

    @property
    def skip(self) -> bool:
        """
        Whether the milter may answer a body chunk with SMFIR_SKIP.
        """
        return bool(self.protocol & wire.SMFIP_SKIP)

    def packet(self) -> bytes:
        """
        The OPTNEG reply.
        """
        macros = self.macros if self.actions & wire.SMFIF_SETSYMLIST else None
        data = wire.encodeNegotiation(self.version, self.actions, self.protocol, macros)
        return wire.packet(wire.OPTNEG, data)


def negotiate(
    handlerClass: type, version: int, actions: int, protocol: int
) -> Negotiated:
    """
    The answer of a milter serving C{handlerClass} to an MTA's offer.

    @raise esmtpkit.milter.wire.MilterProtocolError: a version below 2.
    """
    if version < wire.MIN_VERSION:
        raise wire.MilterProtocolError(f"MTA offers milter protocol version {version}")
    version = min(version, wire.VERSION)
    wanted = getattr(handlerClass, "milterActions", None)
    mine = (MODIFY_ACTIONS if wanted is None else int(wanted)) & MODIFY_ACTIONS
    steps = 0
    for command, hooks in _OPTIONAL:
        if not any(overridden(handlerClass, hook) for hook in hooks):
            steps |= wire.STEP_FLAGS[command][0]
    for command, hooks in _INFORMING:
        if not any(overridden(handlerClass, hook) for hook in hooks):
            steps |= wire.STEP_FLAGS[command][1]
    if not getattr(handlerClass, "milterReplyToHeaders", False):
        # HEADER and EOH answer nothing: a refusal (ReplyError) is answered
        # at the next event that is (a body chunk, the end of the body), as
        # SMTP answers it after the end of the data.
        steps |= wire.SMFIP_NR_HDR | wire.SMFIP_NR_EOH
    steps |= wire.SMFIP_HDR_LEADSPC
    if overridden(handlerClass, "BODY"):
        steps |= wire.SMFIP_SKIP
    macros: dict[int, tuple[str, ...]] = {}
    if version >= 6 and actions & wire.SMFIF_SETSYMLIST:
        mine |= wire.SMFIF_SETSYMLIST
        macros = _wishList(getattr(handlerClass, "milterMacros", None))
    return Negotiated(version, mine & actions, steps & protocol, macros)


def _wishList(extra: Mapping[str, Sequence[str]] | Any) -> dict[int, tuple[str, ...]]:
    macros = {stage: list(names) for stage, names in MACROS.items()}
    for name, names in dict(extra or {}).items():
        stage = STAGES.get(name)
        if stage is None:
            raise ValueError(f"milterMacros: {name!r} is not one of {sorted(STAGES)}")
        for macro in [names] if isinstance(names, str) else names:
            if macro not in macros[stage]:
                macros[stage].append(macro)
    return {stage: tuple(names) for stage, names in macros.items()}
