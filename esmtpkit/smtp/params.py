"""
ESMTP parameters of MAIL and RCPT: the ones esmtpkit knows are checked here
(SIZE, BODY, SMTPUTF8, and DSN's RET, ENVID, NOTIFY, ORCPT); the others are
left for the handler, marked in L{Params.unknown}.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..core.content import TOO_BIG
from ..reply import Reply, ReplyError
from ..session import Params

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["checkMailParams", "checkRcptParams", "xtextDecode", "TOO_BIG"]


_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_UTF8_XTEXT = re.compile(
    r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\x\{[0-9A-Fa-f]{1,6}\}|\+[0-9A-F]{2})*\Z"
)
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\Z")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _bad(keyword: str) -> ReplyError:
    return ReplyError(Reply(501, f"Bad {keyword} parameter", enhanced="5.5.4"))


def xtextDecode(text: str) -> str:
    """
    Decode xtext (RFC 3461 section 4): C{+XX} is the byte with hexadecimal
    value XX.

    @raise ValueError: C{text} is not xtext.
    """
    if not _XTEXT.match(text):
        raise ValueError(f"{text!r} is not xtext")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def checkMailParams(
    params: Params,
    settings: Settings,
    esmtp: bool,
    tls: bool = False,
    auth: bool = False,
    authenticated: bool = False,
) -> Params:
    """
    Check the MAIL parameters esmtpkit knows and mark the others as unknown.

    @param esmtp: the client greeted with EHLO (after HELO no parameter is
        allowed at all).
    @param tls: the connection is encrypted (REQUIRETLS is allowed).
    @param auth: AUTH is offered on this connection (AUTH= is known).
    @param authenticated: the client has authenticated; if not, AUTH= is
        taken as C{<>} (RFC 4954 section 5).
    @raise ReplyError: a known parameter is wrong.
    """
    if not params:
        return params
    _requireEhlo(params, esmtp)
    # Parameters of extensions that are not offered are left unknown.
    known = {"REQUIRETLS"}
    if settings.size:
        known.add("SIZE")
    if settings.eightBitMIME or (settings.binaryMIME and settings.chunking):
        known.add("BODY")
    if settings.smtputf8:
        known.add("SMTPUTF8")
    if "REQUIRETLS" in params:
        if params["REQUIRETLS"] is not None:
            raise _bad("REQUIRETLS")
        if not tls:
            raise ReplyError(
                Reply(
                    530, "REQUIRETLS needs an encrypted connection", enhanced="5.7.10"
                )
            )
    if auth:
        known.add("AUTH")
        if "AUTH" in params:
            mailbox = _authParam(params["AUTH"])
            params["AUTH"] = mailbox if authenticated else "<>"
    if "SIZE" in known and "SIZE" in params:
        size = params["SIZE"]
        if size is None or not size.isdigit() or len(size) > 20:
            raise _bad("SIZE")
        if settings.maxMessageSize and int(size) > settings.maxMessageSize:
            raise ReplyError(TOO_BIG)
    if "BODY" in known and "BODY" in params:
        body = (params["BODY"] or "").upper()
        allowed = {"7BIT", "8BITMIME"} if settings.eightBitMIME else {"7BIT"}
        if settings.binaryMIME and settings.chunking:
            allowed.add("BINARYMIME")
        if body not in allowed:
            raise ReplyError(
                Reply(555, f"Unsupported BODY type {body}", enhanced="5.5.4")
            )
        params["BODY"] = body
    if "SMTPUTF8" in known and "SMTPUTF8" in params and params["SMTPUTF8"] is not None:
        raise _bad("SMTPUTF8")
    if settings.dsn:
        known |= {"RET", "ENVID"}
        if "RET" in params:
            ret = (params["RET"] or "").upper()
            if ret not in ("FULL", "HDRS"):
                raise _bad("RET")
            params["RET"] = ret
        if "ENVID" in params:
            envid = params["ENVID"]
            if envid is None or len(envid) > 100:
                raise _bad("ENVID")
            try:
                params["ENVID"] = xtextDecode(envid)
            except ValueError:
                raise _bad("ENVID") from None
    params.unknown = frozenset(params.keys() - known)
    return params


def checkRcptParams(
    params: Params, settings: Settings, esmtp: bool, utf8: bool
) -> Params:
    """
    Check the RCPT parameters esmtpkit knows and mark the others as unknown.

    @param utf8: the transaction is SMTPUTF8 (ORCPT may then carry UTF-8).
    @raise ReplyError: a known parameter is wrong.
    """
    if not params:
        return params
    _requireEhlo(params, esmtp)
    known: set[str] = set()
    if settings.dsn:
        known |= {"NOTIFY", "ORCPT"}
        if "NOTIFY" in params:
            notify = (params["NOTIFY"] or "").upper()
            values = notify.split(",")
            if notify != "NEVER" and (
                not values
                or any(v not in _NOTIFY for v in values)
                or len(set(values)) != len(values)
            ):
                raise _bad("NOTIFY")
            params["NOTIFY"] = notify
        if "ORCPT" in params:
            params["ORCPT"] = _orcpt(params["ORCPT"], utf8)
    params.unknown = frozenset(params.keys() - known)
    return params


def _authParam(value: str | None) -> str:
    # RFC 4954 section 5: AUTH=<> or AUTH=xtext(addr-spec); the decoded
    # mailbox, or "<>" for an unknown one.
    if value == "<>":
        return value
    try:
        decoded = xtextDecode(value or "")
    except ValueError:
        raise _bad("AUTH") from None
    if not decoded or not decoded.isprintable():
        raise _bad("AUTH")
    return decoded


def _orcpt(value: str | None, utf8: bool) -> str:
    addrType, semicolon, address = (value or "").partition(";")
    if not semicolon or not _ADDR_TYPE.match(addrType) or not address:
        raise _bad("ORCPT")
    if utf8 and addrType.lower() == "utf-8":
        if not _UTF8_XTEXT.match(address):
            raise _bad("ORCPT")
        return f"{addrType};{address}"
    try:
        decoded = xtextDecode(address)
    except ValueError:
        raise _bad("ORCPT") from None
    if not decoded.isprintable():
        raise _bad("ORCPT")
    return f"{addrType};{decoded}"


def _requireEhlo(params: Params, esmtp: bool) -> None:
    if params and not esmtp:
        raise ReplyError(Reply(555, "ESMTP parameters need EHLO", enhanced="5.5.4"))
