"""
The milter server face in memory (L{tests.miltertools.FakeMTA}): option
negotiation, one reply per command, the session filled from events and
macros, content, modifications, and every pitfall of the protocol.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler
from esmtpkit.core.content import SKIP_BODY
from esmtpkit.milter import wire
from esmtpkit.milter.negotiate import MACROS, negotiate
from esmtpkit.milter.replies import replyText as formatReply
from esmtpkit.reply import Reply, ReplyError

from .miltertools import FakeMTA, replyText

# What Postfix checks in a custom reply (milter8.c): each line is
# CODE[- ]X.Y.Z with X the class of CODE.
_POSTFIX_LINE = re.compile(r"([45])\d\d[- ]\1\.\d{1,3}\.\d{1,3}( |$)")


class Recorder(ESMTPHandler):
    """
    Overrides every hook and records each call; replies are the defaults.
    """

    instances: list[Recorder] = []
    milterReplyToHeaders = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        Recorder.instances.append(self)

    def CONNECT(self) -> Any:
        self.calls.append(("CONNECT",))
        return super().CONNECT()

    def HELO(self, domain: str) -> Any:
        self.calls.append(("HELO", domain))
        return super().HELO(domain)

    def EHLO(self, domain: str) -> Any:
        self.calls.append(("EHLO", domain))
        return super().EHLO(domain)

    def MAIL(self, sender: str, params: Any) -> Any:
        self.calls.append(("MAIL", sender, dict(params)))
        return super().MAIL(sender, params)

    def RCPT(self, recipient: str, params: Any) -> Any:
        self.calls.append(("RCPT", recipient, dict(params)))
        return super().RCPT(recipient, params)

    def DATA(self) -> Any:
        self.calls.append(("DATA",))
        return super().DATA()

    def HEADER(self, name: str, value: str) -> Any:
        self.calls.append(("HEADER", name, value))

    def EOH(self) -> Any:
        self.calls.append(("EOH",))

    def BODY(self, chunk: bytes) -> Any:
        self.calls.append(("BODY", chunk))

    def EOM(self) -> Any:
        self.calls.append(("EOM",))
        return super().EOM()

    def ABORT(self) -> Any:
        self.calls.append(("ABORT",))

    def UNKNOWN(self, line: str) -> Any:
        self.calls.append(("UNKNOWN", line))
        return super().UNKNOWN(line)

    def DISCONNECT(self) -> Any:
        self.calls.append(("DISCONNECT",))

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


def _message(mta: FakeMTA, sender: str = "<a@example.org>") -> None:
    mta.command(wire.MAIL, sender)
    mta.command(wire.RCPT, "<b@example.org>")


class NegotiationTests(SynchronousTestCase):
    def test_defaultHandler(self) -> None:
        """
        For a handler that overrides nothing, the steps that bring nothing
        are left out, those that fill the session are sent without reply,
        every modification action and the macro wish list are declared.
        """
        version, actions, protocol, macros = FakeMTA(ESMTPHandler).negotiate()
        self.assertEqual(version, 6)
        self.assertEqual(actions, wire.SMFIF_ALL)
        for flag in (wire.SMFIP_NODATA, wire.SMFIP_NOEOH, wire.SMFIP_NOBODY):
            self.assertTrue(protocol & flag, hex(flag))
        self.assertTrue(protocol & wire.SMFIP_NOUNKNOWN)
        for flag in (
            wire.SMFIP_NR_CONN,
            wire.SMFIP_NR_HELO,
            wire.SMFIP_NR_MAIL,
            wire.SMFIP_NR_RCPT,
            wire.SMFIP_NR_HDR,
        ):
            self.assertTrue(protocol & flag, hex(flag))
        self.assertTrue(protocol & wire.SMFIP_HDR_LEADSPC)
        self.assertFalse(protocol & (wire.SMFIP_NOHDRS | wire.SMFIP_SKIP))
        self.assertEqual(macros, {k: list(v) for k, v in MACROS.items()})

    def test_overridingHandler(self) -> None:
        """
        A handler with its own hooks gets every step, each answered; SKIP is
        asked for since it has BODY.
        """
        _, _, protocol, _ = FakeMTA(Recorder).negotiate()
        self.assertEqual(
            protocol, wire.SMFIP_HDR_LEADSPC | wire.SMFIP_SKIP, hex(protocol)
        )

    def test_headersNotAnswered(self) -> None:
        """
        By default HEADER and EOH are not answered, even when overridden.
        """

        class Headers(ESMTPHandler):
            def HEADER(self, name: str, value: str) -> Any:
                pass

            def EOH(self) -> Any:
                pass

        _, _, protocol, _ = FakeMTA(Headers).negotiate()
        self.assertTrue(protocol & wire.SMFIP_NR_HDR)
        self.assertTrue(protocol & wire.SMFIP_NR_EOH)

    def test_handlerActionsAndMacros(self) -> None:
        """
        C{milterActions} narrows the actions; C{milterMacros} adds macros.
        """

        class Narrow(ESMTPHandler):
            milterActions = wire.SMFIF_ADDHDRS
            milterMacros = {"mail": ["{client_addr}"], "eom": "{msg_id}"}

        _, actions, _, macros = FakeMTA(Narrow).negotiate()
        self.assertEqual(actions, wire.SMFIF_ADDHDRS | wire.SMFIF_SETSYMLIST)
        self.assertIn("{client_addr}", macros[wire.SMFIM_ENVFROM])
        self.assertIn("{msg_id}", macros[wire.SMFIM_EOM])

    def test_downgrade(self) -> None:
        """
        Versions 2 to 5 are spoken as offered, with only the flags the MTA
        offers and (before 6) no macro list.
        """
        for version in (2, 3, 4, 5):
            mta = FakeMTA(ESMTPHandler)
            got, actions, protocol, macros = mta.negotiate(version, 0x3F, 0x7F)
            self.assertEqual(got, version)
            self.assertEqual(actions, 0x3F)
            self.assertEqual(protocol & ~0x7F, 0)
            self.assertEqual(macros, {})
        self.assertEqual(negotiate(ESMTPHandler, 9, 0x1FF, 0x1FFFFF).version, 6)

    def test_tooOld(self) -> None:
        """
        Version 1 is refused: the connection is closed with a log line.
        """
        mta = FakeMTA(ESMTPHandler)
        mta.send(wire.OPTNEG, struct.pack("!III", 1, 0x3F, 0x7F))
        self.assertEqual(mta.packets(), [])
        self.assertTrue(mta.closed)
        self.assertIn("version 1", mta.log.text())


class ReplyTests(SynchronousTestCase):
    def setUp(self) -> None:
        Recorder.instances = []

    def test_oneReplyPerCommand(self) -> None:
        """
        Every command of a session gets exactly one packet; D gets none.
        """
        mta = FakeMTA(Recorder)
        mta.negotiate()
        mta.macros(wire.CONNECT, j="mx.example.net")
        self.assertEqual(mta.packets(), [])
        mta.connect()
        self.assertEqual(mta.packets(), [(wire.CONTINUE, b"")])
        for command, strings in [
            (wire.HELO, ["client.example"]),
            (wire.MAIL, ["<a@example.org>", "SIZE=10"]),
            (wire.RCPT, ["<b@example.org>"]),
            (wire.DATA, []),
            (wire.HEADER, ["Subject", " hi"]),
            (wire.EOH, []),
        ]:
            self.assertEqual(mta.reply(command, *strings), (wire.CONTINUE, b""))
        self.assertEqual(mta.data(wire.BODY, b"x\r\n"), [(wire.CONTINUE, b"")])
        self.assertEqual(mta.reply(wire.BODYEOB), (wire.ACCEPT, b""))
        self.assertEqual(
            Recorder.instances[0].names(),
            [
                "CONNECT",
                "EHLO",
                "MAIL",
                "RCPT",
                "DATA",
                "HEADER",
                "EOH",
                "BODY",
                "EOM",
            ],
        )

    def test_dataNeedsReply(self) -> None:
        """
        In version 6, DATA (T) is answered, with the DATA hook's verdict.
        """

        class Busy(ESMTPHandler):
            def DATA(self) -> Any:
                if self.session.transaction.sender == "busy@example.org":
                    return (451, "4.3.2 Come back later")
                return None

        mta = FakeMTA(Busy)
        mta.start()
        _message(mta)
        self.assertEqual(mta.reply(wire.DATA), (wire.CONTINUE, b""))
        mta.send(wire.ABORT)
        _message(mta, "<busy@example.org>")
        command, data = mta.reply(wire.DATA)
        self.assertEqual(command, wire.REPLYCODE)
        self.assertEqual(replyText(data), "451 4.3.2 Come back later")

    def test_noReplies(self) -> None:
        """
        No reply to A, D, Q or K, nor to events negotiated as no-reply.
        """
        mta = FakeMTA(ESMTPHandler)  # CONNECT, HELO, MAIL, RCPT, HEADER: NR
        mta.negotiate()
        mta.macros(wire.CONNECT, j="mx")
        mta.connect()
        mta.command(wire.HELO, "client.example")
        mta.command(wire.MAIL, "<a@example.org>")
        mta.command(wire.RCPT, "<b@example.org>")
        mta.command(wire.HEADER, "Subject", " x")
        self.assertEqual(mta.packets(), [])
        self.assertEqual(mta.reply(wire.BODYEOB), (wire.ACCEPT, b""))
        mta.send(wire.ABORT)
        mta.send(wire.QUIT_NC)
        self.assertEqual(mta.packets(), [])
        mta.send(wire.QUIT)
        self.assertEqual(mta.packets(), [])
        self.assertTrue(mta.closed)

    def test_customReplyForPostfix(self) -> None:
        """
        A 4xx/5xx reply is SMFIR_REPLYCODE whose every line Postfix takes:
        the code, the separator, an enhanced code of the same class; C{%}
        doubled.
        """
        reply = Reply(550, "No such user", "at 100% sure", enhanced="5.1.1")
        text = formatReply(reply)
        self.assertEqual(text, "550-5.1.1 No such user\r\n550 5.1.1 at 100%% sure")
        for line in formatReply(Reply(451, "busy")).split("\r\n"):
            self.assertRegex(line, _POSTFIX_LINE)
        for line in text.split("\r\n"):
            self.assertRegex(line, _POSTFIX_LINE)

        class Refuse(ESMTPHandler):
            def RCPT(self, recipient: str, params: Any) -> Any:
                return (550, "5.1.1 No such user", "second line")

        mta = FakeMTA(Refuse)
        mta.start()
        mta.command(wire.MAIL, "<a@example.org>")
        command, data = mta.reply(wire.RCPT, "<x@example.org>")
        self.assertEqual(command, wire.REPLYCODE)
        self.assertEqual(
            replyText(data), "550-5.1.1 No such user\r\n550 5.1.1 second line"
        )

    def test_disconnect(self) -> None:
        """
        A handler that asks to disconnect gets SMFIR_SHUTDOWN.
        """

        class Bye(ESMTPHandler):
            def MAIL(self, sender: str, params: Any) -> Any:
                self.disconnect = True

        mta = FakeMTA(Bye)
        mta.start()
        self.assertEqual(mta.reply(wire.MAIL, "<a@example.org>"), (wire.SHUTDOWN, b""))

    def test_progress(self) -> None:
        """
        While a hook keeps a reply waiting, SMFIR_PROGRESS goes out every
        progress interval; the reply follows when the hook answers, and no
        progress after it.
        """
        pending: list[Deferred[Any]] = []

        class Slow(ESMTPHandler):
            def EOM(self) -> Any:
                pending.append(Deferred())
                return pending[-1]

        mta = FakeMTA(Slow)
        mta.start()
        _message(mta)
        self.assertEqual(mta.command(wire.BODYEOB), [])
        mta.clock.advance(9)
        self.assertEqual(mta.packets(), [])
        mta.clock.advance(1)
        self.assertEqual(mta.packets(), [(wire.PROGRESS, b"")])
        mta.clock.advance(10)
        self.assertEqual(mta.packets(), [(wire.PROGRESS, b"")])
        pending[0].callback(None)
        self.assertEqual(mta.packets(), [(wire.ACCEPT, b"")])
        mta.clock.advance(60)
        self.assertEqual(mta.packets(), [])

    def test_pendingHookHoldsInput(self) -> None:
        """
        Packets that come while a hook is pending (no-reply events) are
        handled after it, in order.
        """
        pending: list[Deferred[Any]] = []

        class Slow(Recorder):
            def MAIL(self, sender: str, params: Any) -> Any:
                super().MAIL(sender, params)
                pending.append(Deferred())
                return pending[-1]

        mta = FakeMTA(Slow)
        mta.start()
        mta.send(wire.MAIL, wire.strings("<a@example.org>"))
        mta.send(wire.RCPT, wire.strings("<b@example.org>"))
        self.assertEqual(mta.packets(), [])
        self.assertNotIn("RCPT", Recorder.instances[0].names())
        pending[0].callback(None)
        self.assertEqual(mta.packets(), [(wire.CONTINUE, b""), (wire.CONTINUE, b"")])
        self.assertEqual(Recorder.instances[0].names()[-2:], ["MAIL", "RCPT"])


class ConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        Recorder.instances = []

    def test_abortResetsMessage(self) -> None:
        """
        A ends the message (ABORT), not the connection: the greeting and the
        connection's macros stay, the message's macros and changes go.
        """

        class Changer(Recorder):
            def HEADER(self, name: str, value: str) -> Any:
                super().HEADER(name, value)
                changes = self.session.transaction.modifications
                changes.addHeader("X-From-" + name, value)

        mta = FakeMTA(Changer)
        mta.start()
        mta.macros(wire.MAIL, i="AAA111", auth_authen="alice")
        _message(mta)
        mta.command(wire.HEADER, "Subject", " first")
        mta.send(wire.ABORT)
        handler = Recorder.instances[0]
        self.assertEqual(handler.names()[-1], "ABORT")
        session = mta.session
        self.assertIsNone(session.transaction)
        self.assertEqual(session.heloName, "client.example")
        self.assertEqual(session.macros["j"], "mx.example.net")
        self.assertNotIn("i", session.macros)
        _message(mta)
        mta.command(wire.HEADER, "Keywords", " second")
        answered = mta.command(wire.BODYEOB)
        self.assertEqual(
            answered,
            [
                (wire.ADDHEADER, wire.strings("X-From-Keywords", " second")),
                (wire.ACCEPT, b""),
            ],
        )
        self.assertEqual(len(Recorder.instances), 1)

    def test_quitNewConnection(self) -> None:
        """
        K ends the client's session (ABORT, DISCONNECT) and the next one on
        the same socket has a new handler and session.
        """
        mta = FakeMTA(Recorder)
        mta.start()
        _message(mta)
        first = mta.session
        mta.send(wire.QUIT_NC)
        self.assertEqual(Recorder.instances[0].names()[-2:], ["ABORT", "DISCONNECT"])
        self.assertFalse(mta.closed)
        mta.connect(name="other.example", address="198.51.100.7")
        self.assertEqual(mta.packets(), [(wire.CONTINUE, b"")])
        self.assertEqual(len(Recorder.instances), 2)
        self.assertIsNot(mta.session, first)
        self.assertEqual(mta.session.peerHost, "198.51.100.7")
        self.assertNotIn("j", mta.session.macros)
        self.assertEqual(Recorder.instances[1].names(), ["CONNECT"])

    def test_lostWhileClosingAfterK(self) -> None:
        """
        The connection is lost while the conversation before a K is still
        closing (DISCONNECT pending): it ends all the same, once.
        """
        pending: list[Deferred[Any]] = []

        class SlowBye(ESMTPHandler):
            def DISCONNECT(self) -> Any:
                pending.append(Deferred())
                return pending[-1]

        mta = FakeMTA(SlowBye)
        mta.start()
        mta.send(wire.QUIT_NC)
        limits = mta.factory.context.limits
        mta.close()
        self.assertIn(mta.protocol, limits.ending)
        pending[0].callback(None)
        self.assertEqual(limits.ending, {})
        self.assertEqual(limits.connections, {})

    def test_connectionLost(self) -> None:
        """
        A lost connection closes the conversation: ABORT, then DISCONNECT.
        """
        mta = FakeMTA(Recorder)
        mta.start()
        _message(mta)
        mta.close()
        self.assertEqual(Recorder.instances[0].names()[-2:], ["ABORT", "DISCONNECT"])

    def test_families(self) -> None:
        """
        CONNECT families 4, 6, L (a unix socket, with a port) and U.
        """
        cases = [
            (wire.FAMILY_INET, "192.0.2.1", "192.0.2.1", 25),
            (wire.FAMILY_INET6, "IPv6:2001:db8::1", "2001:db8::1", 25),
            (wire.FAMILY_INET6, "2001:db8::2", "2001:db8::2", 25),
            (wire.FAMILY_UNIX, "/run/client.sock", "/run/client.sock", 0),
        ]
        for family, sent, host, port in cases:
            mta = FakeMTA(ESMTPHandler)
            mta.negotiate()
            mta.connect("client.example", family, port, sent)
            self.assertFalse(mta.closed)
            self.assertEqual(mta.session.peerHost, host)
            self.assertEqual(getattr(mta.session.peer, "port", 0), port)
            self.assertEqual(mta.session.peerName, "client.example")
        mta = FakeMTA(ESMTPHandler)
        mta.negotiate()
        mta.connect("unknown", wire.FAMILY_UNKNOWN)
        self.assertFalse(mta.closed)
        self.assertIsNone(mta.session.peerName)
        self.assertEqual(mta.session.peerHost, "127.0.0.1")  # the MTA's

    def test_sessionFromMacros(self) -> None:
        """
        The session: peer, name, HELO name, TLS, AUTH identity, the queue id
        as the transaction id, ESMTP parameters as Params.
        """
        mta = FakeMTA(Recorder)
        mta.negotiate()
        mta.macros(
            wire.CONNECT,
            j="mx.example.net",
            daemon_name="smtpd",
            daemon_addr="198.51.100.25",
            daemon_port="25",
        )
        mta.connect("client.example", address="203.0.113.9")
        mta.macros(wire.HELO, tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")
        mta.command(wire.HELO, "client.example")
        mta.macros(wire.MAIL, auth_authen="alice", auth_type="PLAIN")
        mta.command(
            wire.MAIL, "<a@example.org>", "SIZE=1234", "BODY=8BITMIME", "ENVID=x+2By"
        )
        mta.macros(wire.RCPT, i="4XyZ12", rcpt_addr="b@example.org")
        mta.command(wire.RCPT, "<b@example.org>", "NOTIFY=NEVER", "ORCPT=rfc822;b+40x")
        session = mta.session
        self.assertEqual(session.peerHost, "203.0.113.9")
        self.assertEqual(session.peerName, "client.example")
        self.assertEqual(session.hostname, "mx.example.net")
        self.assertEqual((session.host.host, session.host.port), ("198.51.100.25", 25))
        self.assertEqual(session.heloName, "client.example")
        self.assertEqual(session.tls.version, "TLSv1.3")
        self.assertEqual(session.tls.cipher, "TLS_AES_256_GCM_SHA384")
        self.assertEqual(session.authenticated, "alice")
        self.assertEqual(session.transaction.id, "4XyZ12")
        self.assertEqual(session.macros["daemon_name"], "smtpd")
        self.assertEqual(session.macros["{rcpt_addr}"], "b@example.org")
        calls = Recorder.instances[0].calls
        self.assertEqual(
            calls[2],
            (
                "MAIL",
                "a@example.org",
                {"SIZE": "1234", "BODY": "8BITMIME", "ENVID": "x+y"},
            ),
        )
        self.assertEqual(
            calls[3],
            ("RCPT", "b@example.org", {"NOTIFY": "NEVER", "ORCPT": "rfc822;b@x"}),
        )
        self.assertEqual(calls[1], ("EHLO", "client.example"))

    def test_laterStageWins(self) -> None:
        """
        Macros of a later stage win; those of earlier stages persist.
        """
        mta = FakeMTA(ESMTPHandler)
        mta.negotiate()
        mta.macros(wire.CONNECT, j="mx", v="Postfix")
        mta.connect()
        mta.macros(wire.MAIL, v="other")
        mta.command(wire.MAIL, "<>")
        self.assertEqual(mta.session.macros["v"], "other")
        self.assertEqual(mta.session.macros["j"], "mx")
        self.assertEqual(mta.session.macros.stage(wire.CONNECT)["v"], "Postfix")
        self.assertEqual(mta.session.transaction.sender, "")


class ProtocolErrorTests(SynchronousTestCase):
    def assertBroken(self, mta: FakeMTA, words: str) -> None:
        self.assertTrue(mta.closed)
        text = mta.log.text()
        self.assertIn("milter protocol error", text)
        self.assertIn(words, text)
        self.assertNotIn("Traceback", text)
        # The server goes on: a new connection is served.
        other = FakeMTA(ESMTPHandler, factory=mta.factory)
        self.assertEqual(other.negotiate()[0], 6)

    def test_oddMacros(self) -> None:
        mta = FakeMTA(ESMTPHandler)
        mta.negotiate()
        mta.send(wire.MACRO, wire.CONNECT + wire.strings("j", "mx", "v"))
        self.assertBroken(mta, "odd")

    def test_unknownCommand(self) -> None:
        mta = FakeMTA(ESMTPHandler)
        mta.negotiate()
        mta.send(b"Z", b"whatever")
        self.assertBroken(mta, "unknown command")

    def test_tooLong(self) -> None:
        mta = FakeMTA(ESMTPHandler)
        mta.negotiate()
        mta.sendRaw(struct.pack("!I", wire.MAX_PACKET + 1) + b"B")
        self.assertBroken(mta, "packet length")

    def test_zeroLength(self) -> None:
        mta = FakeMTA(ESMTPHandler)
        mta.sendRaw(b"\0\0\0\0")
        self.assertBroken(mta, "packet length 0")

    def test_badConnect(self) -> None:
        mta = FakeMTA(ESMTPHandler)
        mta.negotiate()
        mta.send(wire.CONNECT, b"host\0X")
        self.assertBroken(mta, "family")

    def test_beforeNegotiation(self) -> None:
        mta = FakeMTA(ESMTPHandler)
        mta.send(wire.HELO, wire.strings("x"))
        self.assertBroken(mta, "before option negotiation")

    def test_truncatedHeader(self) -> None:
        mta = FakeMTA(Recorder)
        mta.start()
        _message(mta)
        mta.send(wire.HEADER, b"Subject\0no end")
        self.assertBroken(mta, "NUL")


class ContentTests(SynchronousTestCase):
    def setUp(self) -> None:
        Recorder.instances = []

    def test_foldedAndEmptyHeaders(self) -> None:
        """
        A folded value comes with LF: HEADER gets it unfolded, the raw
        headers have CRLF and the leading space; an empty value is
        C{name\\0\\0}.
        """
        mta = FakeMTA(Recorder)
        mta.start()
        _message(mta)
        mta.command(wire.HEADER, "Subject", " first\n\tsecond")
        mta.command(wire.HEADER, "X-Empty", "")
        mta.command(wire.HEADER, "X-Tight", "value")
        mta.command(wire.EOH)
        calls = Recorder.instances[0].calls
        self.assertEqual(
            calls[-4:-1],
            [
                ("HEADER", "Subject", "first\tsecond"),
                ("HEADER", "X-Empty", ""),
                ("HEADER", "X-Tight", "value"),
            ],
        )
        transaction = mta.session.transaction
        self.assertEqual(
            transaction.rawHeaders,
            b"Subject: first\r\n\tsecond\r\nX-Empty:\r\nX-Tight:value\r\n\r\n",
        )
        self.assertEqual(transaction.headers[1], ("X-Empty", ""))

    def test_bigChunk(self) -> None:
        """
        A body chunk of 65,535 octets reaches BODY whole.
        """
        mta = FakeMTA(Recorder)
        mta.start()
        _message(mta)
        chunk = b"x" * 65533 + b"\r\n"
        self.assertEqual(mta.data(wire.BODY, chunk), [(wire.CONTINUE, b"")])
        self.assertEqual(Recorder.instances[0].calls[-2:], [("EOH",), ("BODY", chunk)])

    def test_refuseAtHeader(self) -> None:
        """
        A HEADER hook that raises ReplyError refuses the message there:
        REPLYCODE, ABORT, no more content hooks.
        """

        class Picky(Recorder):
            def HEADER(self, name: str, value: str) -> Any:
                super().HEADER(name, value)
                if name == "Subject" and "spam" in value:
                    raise ReplyError(554, "5.7.1 Spam subject")

        mta = FakeMTA(Picky)
        mta.start()
        _message(mta)
        command, data = mta.reply(wire.HEADER, "Subject", " buy spam")
        self.assertEqual(
            (command, replyText(data)), (wire.REPLYCODE, "554 5.7.1 Spam subject")
        )
        self.assertEqual(Recorder.instances[0].names()[-1], "ABORT")
        command, data = mta.reply(wire.BODYEOB)
        self.assertEqual(replyText(data), "554 5.7.1 Spam subject")
        self.assertNotIn("EOM", Recorder.instances[0].names())

    def test_refuseAtHeaderNoReply(self) -> None:
        """
        By default HEADER is not answered: its refusal is answered at the
        next event that is, here the end of the body.
        """

        class Picky(ESMTPHandler):
            def HEADER(self, name: str, value: str) -> Any:
                raise ReplyError(554, "5.7.1 Spam subject")

        mta = FakeMTA(Picky)
        mta.start()
        _message(mta)
        self.assertEqual(mta.command(wire.HEADER, "Subject", " buy spam"), [])
        self.assertEqual(mta.command(wire.HEADER, "From", " x"), [])
        self.assertIsNone(mta.session.transaction)
        command, data = mta.reply(wire.BODYEOB)
        self.assertEqual(
            (command, replyText(data)), (wire.REPLYCODE, "554 5.7.1 Spam subject")
        )
        self.assertEqual(mta.session.messages, 0)

    def test_skipBody(self) -> None:
        """
        A BODY hook that returns SKIP_BODY gets SMFIR_SKIP sent and is not
        called again.
        """

        class Enough(Recorder):
            def BODY(self, chunk: bytes) -> Any:
                super().BODY(chunk)
                return SKIP_BODY

        mta = FakeMTA(Enough)
        mta.start()
        _message(mta)
        self.assertEqual(mta.data(wire.BODY, b"one\r\n"), [(wire.SKIP, b"")])
        self.assertEqual(mta.data(wire.BODYEOB, b"two\r\n"), [(wire.ACCEPT, b"")])
        bodies = [c for c in Recorder.instances[0].calls if c[0] == "BODY"]
        self.assertEqual(bodies, [("BODY", b"one\r\n")])
        self.assertEqual(mta.session.messages, 1)


class SkipBodyStandAloneTests(SynchronousTestCase):
    def test_smtp(self) -> None:
        """
        SKIP_BODY works stand-alone too: BODY is not called again, the
        message is still counted and accepted.
        """
        from esmtpkit.testing import SMTPTestConnection

        calls: list[bytes] = []

        class Enough(ESMTPHandler):
            def BODY(self, chunk: bytes) -> Any:
                calls.append(chunk)
                return SKIP_BODY

        connection = SMTPTestConnection(Enough, chunkSize=10)
        connection.command("EHLO client.example")
        connection.command("MAIL FROM:<a@example.org>")
        connection.command("RCPT TO:<b@example.org>")
        reply = connection.sendMessage(b"Subject: x\r\n\r\n" + b"y" * 100 + b"\r\n")
        self.assertEqual(reply.code, 250)
        self.assertEqual(calls, [b"y" * 10])


class ModificationTests(SynchronousTestCase):
    def changed(self, change: Any, **negotiation: Any) -> list[tuple[bytes, bytes]]:
        class Changer(ESMTPHandler):
            def EOM(self) -> Any:
                change(self.session.transaction.modifications)

        mta = FakeMTA(Changer)
        mta.start(**negotiation)
        _message(mta)
        return mta.command(wire.BODYEOB)

    def test_everyKind(self) -> None:
        def change(m: Any) -> None:
            m.addHeader("X-Added", "one\r\n two")
            m.insertHeader(0, "X-Top", "top")
            m.changeHeader("Subject", "new", 2)
            m.deleteHeader("X-Gone")
            m.changeSender("new@example.org", {"SIZE": "10"})
            m.addRecipient("c@example.org")
            m.addRecipient("d@example.org", {"NOTIFY": "NEVER"})
            m.deleteRecipient("b@example.org")
            m.replaceBody(iter([b"x" * 70000, b"end\r\n"]))
            m.quarantineMessage("suspicious")

        packets = self.changed(change)
        self.assertEqual(
            packets[:8],
            [
                (wire.ADDHEADER, wire.strings("X-Added", " one\n two")),
                (wire.INSHEADER, struct.pack("!I", 0) + wire.strings("X-Top", " top")),
                (
                    wire.CHGHEADER,
                    struct.pack("!I", 2) + wire.strings("Subject", " new"),
                ),
                (wire.CHGHEADER, struct.pack("!I", 1) + wire.strings("X-Gone", "")),
                (wire.CHGFROM, wire.strings("<new@example.org>", "SIZE=10")),
                (wire.ADDRCPT, wire.strings("<c@example.org>")),
                (wire.ADDRCPT_PAR, wire.strings("<d@example.org>", "NOTIFY=NEVER")),
                (wire.DELRCPT, wire.strings("<b@example.org>")),
            ],
        )
        bodies = [data for command, data in packets if command == wire.REPLBODY]
        self.assertEqual([len(b) for b in bodies], [65535, 70000 - 65535, 5])
        self.assertEqual(b"".join(bodies), b"x" * 70000 + b"end\r\n")
        self.assertEqual(
            packets[-2:],
            [(wire.QUARANTINE, wire.strings("suspicious")), (wire.ACCEPT, b"")],
        )

    def test_emptyBody(self) -> None:
        packets = self.changed(lambda m: m.replaceBody(b""))
        self.assertEqual(packets, [(wire.REPLBODY, b""), (wire.ACCEPT, b"")])

    def test_notAllowed(self) -> None:
        """
        A change whose action the MTA did not allow tempfails the message
        (nothing is half applied), with a log line.
        """
        packets = self.changed(
            lambda m: (m.addHeader("X-A", "1"), m.changeSender("x@example.org")),
            actions=wire.SMFIF_ADDHDRS,
        )
        self.assertEqual(packets, [(wire.TEMPFAIL, b"")])

    def test_failingBody(self) -> None:
        """
        A replacement body whose source fails half way tempfails the
        message; the failure is logged.
        """

        def chunks() -> Any:
            yield b"x" * 70000
            raise OSError("disk gone")

        class Changer(ESMTPHandler):
            def EOM(self) -> Any:
                self.session.transaction.modifications.replaceBody(chunks())

        mta = FakeMTA(Changer)
        mta.start()
        _message(mta)
        packets = mta.command(wire.BODYEOB)
        self.assertEqual(packets[-1], (wire.TEMPFAIL, b""))
        self.assertNotIn((wire.ACCEPT, b""), packets)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_noLeadingSpace(self) -> None:
        """
        Without SMFIP_HDR_LEADSPC the MTA adds the space itself.
        """
        packets = self.changed(
            lambda m: m.addHeader("X-A", "1"),
            protocol=0x1FFFFF & ~wire.SMFIP_HDR_LEADSPC,
        )
        self.assertEqual(packets[0], (wire.ADDHEADER, wire.strings("X-A", "1")))


class DrainTests(SynchronousTestCase):
    def test_idleClosesBusyWaits(self) -> None:
        idle = FakeMTA(ESMTPHandler)
        idle.start()
        busy = FakeMTA(ESMTPHandler, factory=idle.factory)
        busy.start()
        _message(busy)
        idle.protocol.drain()
        busy.protocol.drain()
        self.assertTrue(idle.closed)
        self.assertFalse(busy.closed)
        self.assertEqual(busy.reply(wire.BODYEOB), (wire.ACCEPT, b""))
        self.assertTrue(busy.closed)
