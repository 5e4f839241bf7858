"""
The milter client's state machine, in memory: L{MilterClient} over a
L{StringTransport} with a L{Clock} (negotiation and downgrade, macros per
stage, no-reply steps, replies and changes, timeouts and progress, protocol
errors, a milter closing mid-message, backpressure), and L{MilterFilter}'s
verdicts and default actions over such a client.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from esmtpkit.core.modifications import HeaderChange
from esmtpkit.milter import wire
from esmtpkit.milter.answers import customReply
from esmtpkit.milter.client import (
    OFFERED_ACTIONS,
    OFFERED_PROTOCOL,
    MilterClient,
    MilterTimeout,
    MilterUnavailable,
)
from esmtpkit.milter.filter import MessageFate, MilterFilter
from esmtpkit.milter.telling import headerFields
from esmtpkit.reply import Reply, ReplyError
from esmtpkit.session import Params, Session


def packets(transport: StringTransport) -> list[tuple[bytes, bytes]]:
    """
    The packets written so far (and clear the transport).
    """
    data = transport.value()
    transport.clear()
    return list(wire.PacketReader().feed(data))


def negotiated(
    version: int = 6,
    actions: int = wire.SMFIF_ALL,
    protocol: int = 0,
    macros: dict[int, list[str]] | None = None,
) -> tuple[MilterClient, StringTransport, Clock]:
    """
    A client connected to a StringTransport, after the milter's OPTNEG
    reply.
    """
    clock = Clock()
    client = MilterClient(clock, name="test")
    transport = StringTransport()
    client.makeConnection(transport)
    ((command, data),) = packets(transport)
    assert command == wire.OPTNEG
    assert wire.decodeNegotiation(data)[:3] == (6, OFFERED_ACTIONS, OFFERED_PROTOCOL)
    reply = wire.encodeNegotiation(version, actions, protocol, macros)
    client.dataReceived(wire.packet(wire.OPTNEG, reply))
    assert client.ready.called
    return client, transport, clock


def result(deferred: Deferred[Any]) -> Any:
    """
    The result of a fired Deferred (a Failure if it failed).
    """
    box: list[Any] = []
    deferred.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


class TestNegotiation:
    def test_version6(self) -> None:
        client, _, _ = negotiated(protocol=wire.SMFIP_NOHELO | wire.SMFIP_NR_RCPT)
        assert client.version == 6
        assert client.actions == wire.SMFIF_ALL
        assert not client.wants(wire.HELO)
        assert client.wants(wire.MAIL)

    def test_downgradeToVersion2(self) -> None:
        """
        A version 2 milter gets no DATA nor UNKNOWN (they came later).
        """
        client, transport, _ = negotiated(version=2)
        assert client.version == 2
        assert result(client.data()).action == wire.CONTINUE
        assert result(client.unknown("XYZZY")).action == wire.CONTINUE
        assert packets(transport) == []

    @pytest.mark.parametrize("version", [1, 7])
    def test_badVersion(self, version: int) -> None:
        clock = Clock()
        client = MilterClient(clock)
        transport = StringTransport()
        client.makeConnection(transport)
        client.dataReceived(
            wire.packet(wire.OPTNEG, wire.encodeNegotiation(version, 0, 0))
        )
        assert isinstance(result(client.ready).value, wire.MilterProtocolError)
        assert transport.disconnecting

    def test_actionsNotOfferedIgnored(self) -> None:
        client, _, _ = negotiated(protocol=wire.SMFIP_RCPT_REJ | wire.SMFIP_NOBODY)
        assert client.protocol == wire.SMFIP_NOBODY

    def test_negotiationTimeout(self) -> None:
        clock = Clock()
        client = MilterClient(clock, commandTimeout=30)
        transport = StringTransport()
        client.makeConnection(transport)
        clock.advance(29)
        assert not client.ready.called
        clock.advance(2)
        assert isinstance(result(client.ready).value, MilterTimeout)


class TestCommands:
    def test_macrosOfTheStage(self) -> None:
        """
        The macros sent are the stage's defaults, or the milter's wish list;
        unknown values are left out.
        """
        client, transport, _ = negotiated(
            macros={wire.SMFIM_ENVRCPT: ["{rcpt_addr}", "{daemon_port}", "{nope}"]}
        )
        macros = {
            "i": "ID1",
            "{mail_addr}": "a@example.org",
            "{rcpt_addr}": "b@example.org",
            "{daemon_port}": "25",
            "j": "mx",
        }
        client.mail("a@example.org", ["BODY=8BITMIME"], macros)
        (macro, mail) = packets(transport)
        assert macro[0] == wire.MACRO
        assert wire.decodeMacros(macro[1]) == (
            wire.MAIL,
            {"i": "ID1", "{mail_addr}": "a@example.org"},
        )
        assert mail == (wire.MAIL, b"<a@example.org>\0BODY=8BITMIME\0")
        client.dataReceived(wire.packet(wire.CONTINUE))
        client.rcpt("b@example.org", [], macros)
        (macro, rcpt) = packets(transport)
        assert wire.decodeMacros(macro[1]) == (
            wire.RCPT,
            {"{rcpt_addr}": "b@example.org", "{daemon_port}": "25"},
        )

    def test_noReplyStep(self) -> None:
        """
        A step the milter does not answer (NR_*) is sent and continues at
        once; one it switched off (NO*) is not sent.
        """
        client, transport, _ = negotiated(
            protocol=wire.SMFIP_NR_RCPT | wire.SMFIP_NOHELO
        )
        assert result(client.helo("client.example")).action == wire.CONTINUE
        assert result(client.rcpt("b@example.org", [])).action == wire.CONTINUE
        assert packets(transport) == [(wire.RCPT, b"<b@example.org>\0")]
        deferred = client.data()
        assert not deferred.called

    def test_connectFamilies(self) -> None:
        client, transport, _ = negotiated()
        client.connect("[192.0.2.1]", wire.FAMILY_INET, 4321, "192.0.2.1")
        ((command, data),) = packets(transport)
        assert data == b"[192.0.2.1]\0" + b"4" + (4321).to_bytes(2, "big") + (
            b"192.0.2.1\0"
        )
        client.dataReceived(wire.packet(wire.CONTINUE))
        client.connect("localhost", wire.FAMILY_UNKNOWN, 0, "")
        assert packets(transport) == [(wire.CONNECT, b"localhost\0U")]

    def test_customReply(self) -> None:
        client, _, _ = negotiated()
        deferred = client.mail("a@example.org", [])
        client.dataReceived(
            wire.packet(wire.REPLYCODE, b"554 5.7.1 Spam, 100%% sure\0")
        )
        answer = result(deferred)
        assert answer.action == wire.REPLYCODE
        assert answer.reply == Reply(554, "Spam, 100% sure", enhanced="5.7.1")

    def test_editsAtEndOfMessage(self) -> None:
        client, _, _ = negotiated()
        deferred = client.endOfMessage()
        client.dataReceived(
            wire.packet(wire.ADDHEADER, wire.strings("X-A", "1"))
            + wire.packet(wire.PROGRESS)
            + wire.packet(wire.DELRCPT, wire.strings("<b@example.org>"))
            + wire.packet(wire.ACCEPT)
        )
        answer = result(deferred)
        assert answer.action == wire.ACCEPT
        assert [c for c, _ in answer.edits] == [wire.ADDHEADER, wire.DELRCPT]

    def test_replacementBodySpooled(self) -> None:
        """
        A replacement body longer than the in-memory limit goes to a spool
        file, recorded as the body source in order, whatever the number
        of REPLBODY packets.
        """
        from esmtpkit.core.modifications import Modifications
        from esmtpkit.milter.answers import recordEdits

        client, _, _ = negotiated()
        deferred = client.endOfMessage()
        chunk = b"x" * 65000 + b"\r\n"
        packetsIn = [wire.packet(wire.REPLBODY, chunk) for _ in range(20)]
        client.dataReceived(
            wire.packet(wire.ADDHEADER, wire.strings("X-A", "1"))
            + b"".join(packetsIn)
            + wire.packet(wire.CONTINUE)
        )
        answer = result(deferred)
        assert [c for c, _ in answer.edits] == [wire.ADDHEADER, wire.REPLBODY]
        changes = Modifications()
        recordEdits(answer.edits, changes)
        body = changes.body
        assert hasattr(body, "read") and not isinstance(body, bytes)
        assert body._rolled  # type: ignore[union-attr]  # on disk, not in memory
        assert body.read() == chunk * 20  # type: ignore[union-attr]


class TestFailures:
    def test_commandTimeout(self) -> None:
        client, transport, clock = negotiated()
        deferred = client.mail("a@example.org", [])
        clock.advance(29.9)
        assert not deferred.called
        clock.advance(0.2)
        assert isinstance(result(deferred).value, MilterTimeout)
        assert transport.disconnecting
        assert isinstance(result(client.rcpt("b@example.org", [])).value, MilterTimeout)

    def test_progressRestartsTheTimer(self) -> None:
        """
        The end of message has the content timeout (300 s), and every
        progress report starts it again.
        """
        client, _, clock = negotiated()
        deferred = client.endOfMessage()
        for _ in range(3):
            clock.advance(299)
            client.dataReceived(wire.packet(wire.PROGRESS))
        assert not deferred.called
        clock.advance(299)
        client.dataReceived(wire.packet(wire.CONTINUE))
        assert result(deferred).action == wire.CONTINUE
        assert clock.getDelayedCalls() == []
        late = client.endOfMessage()
        clock.advance(300.5)
        assert isinstance(result(late).value, MilterTimeout)

    @pytest.mark.parametrize(
        "reply",
        [
            wire.packet(wire.ADDHEADER, wire.strings("X-A", "1")),  # not at EOM
            wire.packet(wire.REPLYCODE, b"250 fine\0"),  # not 4xx/5xx
            wire.packet(wire.REPLYCODE, b"550 4.7.1 mixed\0"),  # classes differ
            wire.packet(b"Z"),  # unknown
            wire.packet(wire.CONTINUE, b"junk"),  # data where none belongs
            b"\xff\xff\xff\xff",  # length over the limit
            b"\0\0\0\0",  # empty packet
        ],
    )
    def test_protocolError(self, reply: bytes) -> None:
        client, transport, _ = negotiated()
        deferred = client.mail("a@example.org", [])
        client.dataReceived(reply)
        assert isinstance(result(deferred).value, wire.MilterProtocolError)
        assert transport.disconnecting
        assert client.broken is not None

    def test_editNotNegotiated(self) -> None:
        client, _, _ = negotiated(actions=wire.SMFIF_ADDHDRS)
        deferred = client.endOfMessage()
        client.dataReceived(wire.packet(wire.DELRCPT, wire.strings("<b@x>")))
        assert isinstance(result(deferred).value, wire.MilterProtocolError)

    def test_replyWithNothingAsked(self) -> None:
        client, transport, _ = negotiated()
        client.dataReceived(wire.packet(wire.CONTINUE))
        assert transport.disconnecting
        assert isinstance(
            result(client.mail("a@example.org", [])).value, wire.MilterProtocolError
        )

    def test_closedMidMessage(self) -> None:
        client, _, _ = negotiated()
        deferred = client.body(b"x" * 1000)
        client.connectionLost(Failure(ConnectionDone()))
        assert isinstance(result(deferred).value, MilterUnavailable)
        assert isinstance(result(client.endOfMessage()).value, MilterUnavailable)

    def test_cancelledBreaks(self) -> None:
        """
        Giving up on a reply (the hook timed out) leaves the milter out of
        step: the connection is closed.
        """
        client, transport, _ = negotiated()
        deferred = client.endOfMessage()
        deferred.cancel()
        assert transport.disconnecting
        assert client.broken is not None


class TestBackpressure:
    def test_noReplyBodyWaitsForTheSocket(self) -> None:
        client, transport, _ = negotiated(protocol=wire.SMFIP_NR_BODY)
        producer = transport.producer
        assert producer is not None
        producer.pauseProducing()
        deferred = client.body(b"x" * 100)
        assert not deferred.called
        producer.resumeProducing()
        assert result(deferred).action == wire.CONTINUE

    def test_chunkLimit(self) -> None:
        client, _, _ = negotiated()
        with pytest.raises(ValueError):
            client.body(b"x" * (wire.MAX_BODY_CHUNK + 1))


class FakeConnector:
    description = "inet:test:1"
    daemonName = None

    def __init__(self, client: MilterClient | None, defaultAction: str) -> None:
        self.client = client
        self.defaultAction = defaultAction

    def connect(self) -> Deferred[MilterClient]:
        if self.client is None:
            return fail(MilterUnavailable("connection refused"))
        return succeed(self.client)


def makeFilter(
    defaultAction: str = "tempfail", client: MilterClient | None = None
) -> tuple[MilterFilter, Session]:
    milter = MilterFilter(FakeConnector(client, defaultAction), MessageFate())  # type: ignore[arg-type]
    session = Session(hostname="mx.example")
    milter.session = session
    return milter, session


def answer(transport: StringTransport, client: MilterClient, reply: bytes) -> None:
    packets(transport)
    client.dataReceived(reply)


class TestFilter:
    def startMessage(self, defaultAction: str = "tempfail") -> Any:
        client, transport, clock = negotiated()
        milter, session = makeFilter(defaultAction, client)
        connecting = ensureDeferred(milter.CONNECT())
        answer(transport, client, wire.packet(wire.CONTINUE))
        assert result(connecting) is None
        session.transaction = session.newTransaction("a@example.org", Params())
        mailing = ensureDeferred(milter.MAIL("a@example.org", Params()))
        answer(transport, client, wire.packet(wire.CONTINUE))
        assert result(mailing) is None
        return milter, session, client, transport, clock

    @pytest.mark.parametrize(
        "action, expected",
        [
            ("tempfail", Reply(451, "4.7.1 Service unavailable - try again later")),
            ("reject", Reply(550, "5.7.1 Command rejected")),
            ("accept", None),
        ],
    )
    def test_milterDown(self, action: str, expected: Reply | None) -> None:
        milter, session = makeFilter(action)
        assert result(ensureDeferred(milter.CONNECT())) is None
        session.transaction = session.newTransaction("a@example.org", Params())
        assert result(ensureDeferred(milter.MAIL("a@example.org", Params()))) == (
            expected
        )

    @pytest.mark.parametrize(
        "action, refused", [("tempfail", 451), ("reject", 550), ("accept", None)]
    )
    def test_closedMidBody(self, action: str, refused: int | None) -> None:
        milter, session, client, transport, _ = self.startMessage(action)
        body = ensureDeferred(milter.BODY(b"x" * 70_000))
        client.connectionLost(Failure(ConnectionDone()))
        outcome = result(body)
        if refused is None:
            assert outcome is None
            assert result(ensureDeferred(milter.EOM())) is None
        else:
            assert isinstance(outcome.value, ReplyError)
            assert outcome.value.reply.code == refused

    @pytest.mark.parametrize(
        "action, refused", [("tempfail", 451), ("reject", 550), ("accept", None)]
    )
    def test_closedBetweenCommands(self, action: str, refused: int | None) -> None:
        """
        A milter that closed while nothing was asked of it is found out at
        the next command, which gets the default action.
        """
        milter, session, client, transport, _ = self.startMessage(action)
        assert result(ensureDeferred(milter.BODY(b"x" * 100))) is None
        client.connectionLost(Failure(ConnectionDone()))
        ending = result(ensureDeferred(milter.EOM()))
        if refused is None:
            assert ending is None
        else:
            assert ending.code == refused
        assert packets(transport) == []

    def test_bodyPiecesOneAtATime(self) -> None:
        """
        A chunk larger than a milter packet goes in pieces, each sent only
        once the one before was answered: BODY is pending until the last.
        What is left over waits for the next chunk, then for the end of the
        message.
        """
        milter, _, client, transport, _ = self.startMessage()
        body = ensureDeferred(milter.BODY(b"y" * 150_000))
        sizes = []
        for _ in range(2):
            assert not body.called
            ((command, data),) = packets(transport)
            assert command == wire.BODY
            sizes.append(len(data))
            client.dataReceived(wire.packet(wire.CONTINUE))
        assert result(body) is None
        assert packets(transport) == []
        # 18,930 octets left, and 50,000 more: one piece of 65,535.
        more = ensureDeferred(milter.BODY(b"z" * 50_000))
        ((command, data),) = packets(transport)
        assert data == b"y" * 18_930 + b"z" * 46_605
        client.dataReceived(wire.packet(wire.CONTINUE))
        assert result(more) is None
        ending = ensureDeferred(milter.EOM())
        ((command, data),) = packets(transport)
        assert (command, data) == (wire.BODY, b"z" * 3_395)
        client.dataReceived(wire.packet(wire.CONTINUE))
        assert [c for c, _ in packets(transport)] == [wire.MACRO, wire.BODYEOB]
        client.dataReceived(wire.packet(wire.CONTINUE))
        assert result(ending) is None
        assert sizes == [65535, 65535]

    def test_restRefusedAtEnd(self) -> None:
        milter, _, client, transport, _ = self.startMessage()
        assert result(ensureDeferred(milter.BODY(b"BODYREJECT"))) is None
        ending = ensureDeferred(milter.EOM())
        answer(transport, client, wire.packet(wire.REJECT))
        assert result(ending) == Reply(550, "5.7.1 Command rejected")
        assert packets(transport) == []

    def test_skip(self) -> None:
        milter, _, client, transport, _ = self.startMessage()
        body = ensureDeferred(milter.BODY(b"y" * 100_000))
        answer(transport, client, wire.packet(wire.SKIP))
        assert result(body) is None
        assert result(ensureDeferred(milter.BODY(b"more"))) is None
        assert packets(transport) == []

    def test_editsRecorded(self) -> None:
        milter, session, client, transport, _ = self.startMessage()
        ending = ensureDeferred(milter.EOM())
        answer(
            transport,
            client,
            wire.packet(wire.INSHEADER, wire.encodeIndexed(0, "X-Top", "v\nw"))
            + wire.packet(wire.CHGHEADER, wire.encodeIndexed(0, "Subject", ""))
            + wire.packet(wire.CONTINUE),
        )
        assert result(ending) is None
        assert session.transaction is not None
        assert session.transaction.modifications.headers == [
            HeaderChange("insert", "X-Top", "v\nw", 0),
            HeaderChange("change", "Subject", None, 1),
        ]

    def test_rejectAtEndRecordsNothing(self) -> None:
        milter, session, client, transport, _ = self.startMessage()
        ending = ensureDeferred(milter.EOM())
        answer(
            transport,
            client,
            wire.packet(wire.ADDHEADER, wire.strings("X-A", "1"))
            + wire.packet(wire.REJECT),
        )
        assert result(ending) == Reply(550, "5.7.1 Command rejected")
        assert session.transaction is not None
        assert not session.transaction.modified

    def test_discardMarksTheFate(self) -> None:
        milter, session, client, transport, _ = self.startMessage()
        ending = ensureDeferred(milter.EOM())
        answer(transport, client, wire.packet(wire.DISCARD))
        assert result(ending) is None
        assert session.transaction is not None
        assert milter.fate is not None
        assert milter.fate.discarded == session.transaction.id

    @pytest.mark.parametrize(
        "reply, mail",
        [
            (wire.packet(wire.ACCEPT), None),
            (wire.packet(wire.REJECT), Reply(550, "5.7.1 Command rejected")),
            (
                wire.packet(wire.REPLYCODE, b"554 5.7.1 Go away\0"),
                Reply(554, "5.7.1 Go away"),
            ),
        ],
    )
    def test_atConnect(self, reply: bytes, mail: Reply | None) -> None:
        """
        Accept at connect: the milter is not asked again this session. A
        refusal at connect: the client is greeted, and MAIL gets it.
        """
        client, transport, _ = negotiated()
        milter, session = makeFilter("tempfail", client)
        connecting = ensureDeferred(milter.CONNECT())
        answer(transport, client, reply)
        assert result(connecting) is None
        session.transaction = session.newTransaction("a@example.org", Params())
        mailing = ensureDeferred(milter.MAIL("a@example.org", Params()))
        assert result(mailing) == mail
        assert [c for c, _ in packets(transport)] == [wire.QUIT]

    def test_shutdown(self) -> None:
        milter, _, client, transport, _ = self.startMessage()
        asking = ensureDeferred(milter.RCPT("b@example.org", Params()))
        answer(transport, client, wire.packet(wire.SHUTDOWN))
        assert result(asking) == Reply(421, "4.7.0 Service shutting down")
        assert milter.disconnect

    def test_abortSent(self) -> None:
        milter, _, client, transport, _ = self.startMessage()
        milter.ABORT()
        assert packets(transport) == [(wire.ABORT, b"")]
        milter.ABORT()
        assert packets(transport) == []


class TestCustomReply:
    def test_multiline(self) -> None:
        reply = customReply(b"451-4.7.0 first\r\n451 4.7.0 second")
        assert reply == Reply(451, "first", "second", enhanced="4.7.0")

    @pytest.mark.parametrize(
        "text",
        [
            b"451-4.7.0 a\r\n550 5.7.0 b",  # codes differ
            b"451 a\r\n451 b",  # a middle line without "-"
            b"45 short",
            b"",
        ],
    )
    def test_malformed(self, text: bytes) -> None:
        with pytest.raises(wire.MilterProtocolError):
            customReply(text)

    def test_lonePercentDropped(self) -> None:
        assert customReply(b"550 50% off").lines == ("50 off",)


class TestHeaderFields:
    RAW = b"Subject:  two spaces\r\nX-F: a\r\n\tb\r\n  c\r\nEmpty:\r\n\r\n"

    def test_withoutLeadingSpace(self) -> None:
        assert list(headerFields(self.RAW, False)) == [
            (b"Subject", b"two spaces"),
            (b"X-F", b"a\n\tb\n  c"),
            (b"Empty", b""),
        ]

    def test_withLeadingSpace(self) -> None:
        assert list(headerFields(self.RAW, True))[:2] == [
            (b"Subject", b"  two spaces"),
            (b"X-F", b" a\n\tb\n  c"),
        ]


class TestConfiguration:
    def test_endpoints(self) -> None:
        from twisted.internet.endpoints import (
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            UNIXClientEndpoint,
        )

        from esmtpkit.milter.connector import milterEndpoint

        clock = Clock()
        inet = milterEndpoint(clock, "inet:127.0.0.1:8891")
        assert isinstance(inet, TCP4ClientEndpoint)
        assert (inet._host, inet._port) == ("127.0.0.1", 8891)
        assert isinstance(milterEndpoint(clock, "inet:[::1]:8891"), TCP6ClientEndpoint)
        unix = milterEndpoint(clock, "unix:/run/milter.sock")
        assert isinstance(unix, UNIXClientEndpoint)
        assert unix._path == "/run/milter.sock"
        twisted = milterEndpoint(clock, "tcp:host=localhost:port=10")
        assert isinstance(twisted, TCP4ClientEndpoint)
        for bad in ("inet:nohost", "inet:host:port", "milter", "bogus:x=1"):
            with pytest.raises(ValueError):
                milterEndpoint(clock, bad)

    def test_tapOptions(self) -> None:
        from esmtpkit.handlers import Chain
        from esmtpkit.milter.front import DiscardGate
        from esmtpkit.server.tap import Options

        options = Options()
        options.parseOptions(
            [
                "--handler",
                "esmtpkit.handlers.Sink",
                "--milter",
                "inet:127.0.0.1:8891",
                "--milter",
                "unix:/run/spam.sock",
                "--milter-default-action",
                "accept",
                "--milter-command-timeout",
                "5",
            ]
        )
        chain = options["handlerFactory"]()
        assert isinstance(chain, Chain)
        first, second, gate = chain.handlers
        assert isinstance(first, MilterFilter) and isinstance(second, MilterFilter)
        assert first.connector.description == "inet:127.0.0.1:8891"
        assert second.connector.description == "unix:/run/spam.sock"
        assert first.connector.defaultAction == "accept"
        assert first.connector.commandTimeout == 5.0
        assert first.connector.contentTimeout == 300.0
        assert first.fate is second.fate is gate.fate
        assert isinstance(gate, DiscardGate)
        # The default hook timeout grows past the milters' longest one.
        assert options["settings"].hookTimeout == 330.0

    def test_hookTimeoutWithMilters(self) -> None:
        from twisted.python import usage

        from esmtpkit.server.tap import Options

        base = ["--handler", "esmtpkit.handlers.Sink", "--milter", "inet:127.0.0.1:1"]
        options = Options()
        options.parseOptions([*base, "--milter-content-timeout", "20"])
        assert options["settings"].hookTimeout == 60.0  # long enough already
        options = Options()
        options.parseOptions([*base, "--hook-timeout", "0"])
        assert options["settings"].hookTimeout == 0.0  # no limit stays
        options = Options()
        options.parseOptions([*base, "--hook-timeout", "400"])
        assert options["settings"].hookTimeout == 400.0
        with pytest.raises(usage.UsageError) as raised:
            Options().parseOptions([*base, "--hook-timeout", "120"])
        assert "--milter-content-timeout" in str(raised.value)

    @pytest.mark.parametrize(
        "arguments",
        [
            ["--milter", "inet:nohost"],
            ["--milter", "inet:127.0.0.1:1", "--milter-default-action", "shrug"],
            ["--milter", "inet:127.0.0.1:1", "--milter-content-timeout", "soon"],
            ["--milter", "inet:127.0.0.1:1", "--milter-command-timeout", "-1"],
        ],
    )
    def test_tapErrors(self, arguments: list[str]) -> None:
        from twisted.python import usage

        from esmtpkit.server.tap import Options

        with pytest.raises(usage.UsageError):
            Options().parseOptions(["--handler", "esmtpkit.handlers.Sink", *arguments])


class AnsweringTransport(StringTransport):
    """
    The milter's side of a StringTransport: every command that wants a
    reply is answered CONTINUE at once, except body chunks, which are held
    in L{held} until the test answers them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.client: MilterClient | None = None
        self.reader = wire.PacketReader()
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        assert self.client is not None
        for command, body in self.reader.feed(data):
            if command == wire.BODY:
                self.held.append(body)
            elif command not in (wire.MACRO, wire.ABORT, wire.QUIT, wire.OPTNEG):
                self.client.dataReceived(wire.packet(wire.CONTINUE))


def test_slowMilterPausesTheClient() -> None:
    """
    Over a whole esmtpkit connection: while the milter has not answered a
    body chunk, esmtpkit stops reading from the SMTP client; it goes on
    when the milter answers, and only one piece is with the milter at a
    time.
    """
    from esmtpkit.handlers import Sink
    from esmtpkit.milter.front import withMilters
    from esmtpkit.testing import SMTPTestConnection, dotStuff

    clock = Clock()
    client = MilterClient(clock, name="slow")
    transport = AnsweringTransport()
    transport.client = client
    client.makeConnection(transport)
    client.dataReceived(
        wire.packet(wire.OPTNEG, wire.encodeNegotiation(6, wire.SMFIF_ALL, 0))
    )
    connector = FakeConnector(client, "tempfail")
    conn = SMTPTestConnection(withMilters([connector], Sink), clock=clock)  # type: ignore[list-item]
    assert conn.greeting is not None and conn.greeting.code == 220
    assert conn.command("EHLO client.example").code == 250
    assert conn.command("MAIL FROM:<a@example.org>").code == 250
    assert conn.command("RCPT TO:<b@example.org>").code == 250
    assert conn.command("DATA").code == 354
    body = b"z" * 78 + b"\r\n"
    conn.send(dotStuff(b"Subject: big\r\n\r\n" + body * 2000))
    answered = 0
    while transport.held or conn.transport.producerState == "paused":
        assert len(transport.held) == 1
        assert conn.transport.producerState == "paused"
        assert conn.replies() == []
        transport.held.pop()
        answered += 1
        client.dataReceived(wire.packet(wire.CONTINUE))
        assert answered < 100
    assert answered >= len(body) * 2000 // 65535 + 1
    (reply,) = conn.replies()
    assert reply.code == 250


class TestMacros:
    def test_sessionMacros(self) -> None:
        from twisted.internet.address import IPv4Address, UNIXAddress

        from esmtpkit.milter.telling import connectInfo, sessionMacros
        from esmtpkit.session import Recipient, TLSInfo

        session = Session(
            peer=IPv4Address("TCP", "192.0.2.7", 40000),
            host=IPv4Address("TCP", "198.51.100.1", 25),
            hostname="mx.example",
        )
        session.tls = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384")
        session.authenticated = b"alice"
        session.authMechanism = "PLAIN"
        params = Params(AUTH="alice@example.org")
        transaction = session.transaction = session.newTransaction("a@x", params)
        transaction.recipients.append(Recipient("b@y"))
        macros = sessionMacros(session, daemonName="smtpd")
        assert macros["j"] == "mx.example"
        assert macros["{daemon_name}"] == "smtpd"
        assert macros["{daemon_addr}"] == "198.51.100.1"
        assert macros["{daemon_port}"] == "25"
        assert macros["{client_addr}"] == "192.0.2.7"
        assert macros["{client_port}"] == "40000"
        assert macros["_"] == "unknown [192.0.2.7]"
        assert macros["{tls_version}"] == "TLSv1.3"
        assert macros["{cipher}"] == "TLS_AES_256_GCM_SHA384"
        assert macros["{auth_authen}"] == "alice"
        assert macros["{auth_type}"] == "PLAIN"
        assert macros["{auth_author}"] == "alice@example.org"
        assert macros["i"] == transaction.id
        assert macros["{mail_addr}"] == "a@x"
        assert macros["{rcpt_addr}"] == "b@y"
        assert connectInfo(session) == ("[192.0.2.7]", b"4", 40000, "192.0.2.7")
        local = Session(peer=UNIXAddress(b"/run/smtp.sock"))
        assert connectInfo(local) == ("localhost", b"L", 0, "/run/smtp.sock")
        assert connectInfo(Session()) == ("localhost", b"U", 0, "")


def test_packageExports() -> None:
    import esmtpkit.milter
    from esmtpkit.milter.front import withMilters

    assert esmtpkit.milter.MilterFilter is MilterFilter
    assert esmtpkit.milter.MilterClient is MilterClient
    assert esmtpkit.milter.withMilters is withMilters
    with pytest.raises(AttributeError):
        esmtpkit.milter.Nothing  # noqa: B018
