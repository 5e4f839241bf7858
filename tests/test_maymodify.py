"""
The C{mayModify} declaration: L{Chain} tells each member whether one
before it (in it or in an enclosing chain) declares it.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from esmtpkit import ESMTPHandler
from esmtpkit.core.modifications import declaresModifications, modifiedBefore
from esmtpkit.handlers import Chain, Relay
from esmtpkit.milter.connector import MilterConnector
from esmtpkit.milter.front import withMilters
from esmtpkit.testing import SMTPTestConnection

from .helpers import LOOPBACK
from .modifyhelpers import Modifier


def test_modifiedBefore() -> None:
    """
    Members after a declaring one, nested chains included, see
    C{session.modifiedBefore}; those before it, and a handler outside any
    chain, do not.
    """
    inner = Chain([ESMTPHandler(), Modifier()])
    members = [ESMTPHandler(), Modifier(), ESMTPHandler(), inner]
    first = Chain([ESMTPHandler(), Chain([ESMTPHandler(), Modifier()]), ESMTPHandler()])
    outer = Chain([first, Chain(members)])
    conn = SMTPTestConnection(lambda: outer)
    assert not modifiedBefore(conn.session)
    assert [modifiedBefore(h.session) for h in members] == [True] * 4
    plain = Chain(members[:3] + [Chain([ESMTPHandler()])])
    SMTPTestConnection(lambda: plain)
    seen = [modifiedBefore(h.session) for h in plain.handlers]
    assert seen == [False, False, True, True]
    assert modifiedBefore(plain.handlers[3].handlers[0].session)
    assert [modifiedBefore(h.session) for h in first.handlers] == [False, False, True]
    conn.close()


def test_milterFilterDeclares() -> None:
    """
    A milter filter declares C{mayModify}: the handler behind the milters
    (through the discard gate) sees C{modifiedBefore}, and a relay there
    spools.
    """
    memory = MemoryReactorClock()  # the milter is never reached
    connector = MilterConnector("unix:/nonexistent/milter.sock", reactor=memory)
    relay = Relay(LOOPBACK, 25)
    chain = withMilters([connector], lambda: relay)()
    conn = SMTPTestConnection(lambda: chain)
    assert declaresModifications(chain.handlers[0])
    assert modifiedBefore(relay.session)
    assert relay.spools()
    assert not Relay(LOOPBACK, 25, spool="never").spools()
    conn.close()


def test_chainDeclares() -> None:
    """
    A chain declares C{mayModify} when a member does.
    """
    assert declaresModifications(Chain([ESMTPHandler(), Modifier()]))
    assert not declaresModifications(Chain([ESMTPHandler()]))
    assert not declaresModifications(ESMTPHandler())
