"""
Syntax of envelope addresses (RFC 5321 section 4.1.2, with the UTF-8 forms
of RFC 6531) and their length limits (section 4.5.3.1).
"""

from __future__ import annotations

import functools
import ipaddress
import re

__all__ = ["isValidMailbox", "isValidDomain"]

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256  # including the angle brackets

_ATOM_ASCII = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\Z")
_ATOM_UTF8 = re.compile(r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+\Z")
_QUOTED_ASCII = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_QUOTED_UTF8 = re.compile(
    r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\[\x20-\x7e])*"\Z'
)
_LABEL_ASCII = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_LABEL_UTF8 = re.compile(
    r"(?:[A-Za-z0-9]|[^\x00-\x7f])(?:(?:[A-Za-z0-9-]|[^\x00-\x7f])*(?:[A-Za-z0-9]|[^\x00-\x7f]))?\Z"
)
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+\Z")


def _octets(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _hasSurrogates(text: str) -> bool:
    # Bytes that were not UTF-8 arrive as lone surrogates (surrogateescape).
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def isValidDomain(domain: str, utf8: bool = False) -> bool:
    """
    Whether C{domain} is a valid RFC 5321 C{Domain} or address literal.

    @param utf8: accept U-labels (RFC 6531).
    """
    if not domain or _octets(domain) > MAX_DOMAIN or _hasSurrogates(domain):
        return False
    if domain.startswith("["):
        return _isValidLiteral(domain)
    label = _LABEL_UTF8 if utf8 else _LABEL_ASCII
    for part in domain.split("."):
        if _octets(part) > 63 or not label.match(part):
            return False
    return True


def _isValidLiteral(literal: str) -> bool:
    if not literal.endswith("]"):
        return False
    inner = literal[1:-1]
    if inner[:5].lower() == "ipv6:":
        if "%" in inner:  # a zone id is not part of RFC 5321's IPv6-addr
            return False
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    if ":" in inner:
        return bool(_GENERAL_LITERAL.match(inner))
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def isValidMailbox(address: str, utf8: bool = False) -> bool:
    """
    Whether C{address} is a valid RFC 5321 C{Mailbox} within the length
    limits: a local part of at most 64 octets, a domain of at most 255, the
    whole path at most 256 with its angle brackets.

    @param utf8: accept UTF-8 in the local part and domain (RFC 6531).
    """
    if _octets(address) + 2 > MAX_PATH or _hasSurrogates(address):
        return False
    at = address.rfind("@")
    if at <= 0:
        return False
    local, domain = address[:at], address[at + 1 :]
    if _octets(local) > MAX_LOCAL_PART:
        return False
    if local.startswith('"'):
        quoted = _QUOTED_UTF8 if utf8 else _QUOTED_ASCII
        if not quoted.match(local):
            return False
    else:
        atom = _ATOM_UTF8 if utf8 else _ATOM_ASCII
        if not all(atom.match(part) for part in local.split(".")):
            return False
    return isValidDomain(domain, utf8)
