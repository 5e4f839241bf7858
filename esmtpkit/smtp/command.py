"""
Syntax of SMTP command lines: the verb, the MAIL/RCPT paths and their ESMTP
parameters (RFC 5321 sections 4.1.1 and 4.1.2).

Everything here is a pure function of text; errors are raised as
L{ReplyError} with the reply to send.
"""

from __future__ import annotations

import re
import sys

from ..reply import Reply, ReplyError
from ..session import Params
from .address import isValidMailbox

__all__ = [
    "splitCommand",
    "parsePath",
    "parseParams",
    "checkMailbox",
]

_VERB = re.compile(rb"[A-Za-z]{1,16}\Z")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE_ASCII = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_VALUE_UTF8 = re.compile(r"(?:[\x21-\x3c\x3e-\x7e]|[^\x00-\x7f])+\Z")


def splitCommand(line: bytes) -> tuple[str, str]:
    """
    Split a command line into its upper-cased verb and its argument text.

    @return: C{(verb, argument)}; the verb is C{""} when the line does not
        start with a plausible one. The argument is decoded as UTF-8 with
        C{surrogateescape} and stripped of surrounding spaces.
    """
    raw, _, arg = line.partition(b" ")
    verb = _verbs.get(raw)
    if verb is None:
        if not _VERB.match(raw):
            return "", ""
        verb = sys.intern(raw.decode("ascii").upper())
        if len(_verbs) < _VERBS_KEPT:
            _verbs[raw] = verb
    return verb, arg.decode("utf-8", "surrogateescape").strip(" ")


# The verbs seen so far, as sent, and their names: most commands are then
# one lookup, and every connection shares one string per verb.
_verbs: dict[bytes, str] = {}
_VERBS_KEPT = 1024


def parsePath(arg: str, keyword: str, missing: Reply) -> tuple[str, str]:
    """
    Split C{FROM:<path> params} (or C{TO:...}) into the address and the
    parameter text.

    Lenient where real clients are sloppy (a space after the colon, a path
    without angle brackets); a source route (C{<@a,@b:user@c>}) is dropped
    as RFC 5321 section 3.3 asks.

    @param keyword: C{"FROM"} or C{"TO"}.
    @param missing: the reply when there is no path at all.
    @raise ReplyError: the syntax is wrong.
    """
    head = keyword + ":"
    if arg[: len(head)].upper() != head:
        raise ReplyError(
            Reply(
                501,
                f"Syntax: {'MAIL FROM' if keyword == 'FROM' else 'RCPT TO'}:<address>",
                enhanced="5.5.4",
            )
        )
    rest = arg[len(head) :].lstrip(" ")
    if not rest:
        raise ReplyError(missing)
    if rest.startswith("<"):
        end = _closingBracket(rest)
        if end < 0:
            raise ReplyError(
                Reply(501, "Unbalanced angle brackets in path", enhanced="5.5.4")
            )
        path, params = rest[1:end], rest[end + 1 :]
        if params and not params.startswith(" "):
            raise ReplyError(Reply(501, "Missing space after path", enhanced="5.5.4"))
    else:
        path, _, params = rest.partition(" ")
    if path.startswith("@"):
        colon = path.find(":")
        if colon < 0:
            raise ReplyError(Reply(501, "Bad source route", enhanced="5.5.4"))
        path = path[colon + 1 :]
    return path, params.strip(" ")


def _closingBracket(text: str) -> int:
    if '"' not in text:
        return text.find(">")
    inQuotes = escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\" and inQuotes:
            escaped = True
        elif char == '"':
            inQuotes = not inQuotes
        elif char == ">" and not inQuotes:
            return index
    return -1


def parseParams(text: str, utf8: bool = False) -> Params:
    """
    Parse ESMTP parameters C{KEY=value KEY2 ...} into a dict keyed by the
    upper-cased keyword.

    @param utf8: allow UTF-8 in values (the command carried SMTPUTF8).
    @raise ReplyError: 501 for bad syntax or a repeated keyword.
    """
    params = Params()
    if not text:
        return params
    valueSyntax = _VALUE_UTF8 if utf8 else _VALUE_ASCII
    for token in text.split(" "):
        if not token:
            continue
        key, equals, value = token.partition("=")
        if not _KEYWORD.match(key) or (equals and not valueSyntax.match(value)):
            raise ReplyError(
                Reply(501, f"Bad parameter syntax: {_shown(token)}", enhanced="5.5.4")
            )
        upper = key.upper()
        if upper in params:
            raise ReplyError(
                Reply(501, f"Duplicate parameter {upper}", enhanced="5.5.4")
            )
        params[upper] = value if equals else None
    return params


def _shown(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:40])


def checkMailbox(address: str, utf8: bool, sender: bool) -> None:
    """
    Refuse an address that is not a valid mailbox.

    @param utf8: the transaction is SMTPUTF8, so UTF-8 addresses are fine.
    @param sender: C{True} for the reverse-path (MAIL), C{False} for a
        forward-path (RCPT); picks the enhanced code (5.1.7 or 5.1.3).
    @raise ReplyError: 553 5.6.7 for UTF-8 without SMTPUTF8, else 501.
    """
    if not address.isascii() and not utf8 and isValidMailbox(address, True):
        raise ReplyError(
            Reply(553, "Non-ASCII addresses require SMTPUTF8", enhanced="5.6.7")
        )
    if not isValidMailbox(address, utf8):
        if sender:
            raise ReplyError(Reply(501, "Bad sender address syntax", enhanced="5.1.7"))
        raise ReplyError(Reply(501, "Bad recipient address syntax", enhanced="5.1.3"))
