"""
A milter on Debian's python3-milter (pymilter, on Sendmail's libmilter) for
the milter client tests. Run it with the system Python:

    /usr/bin/python3 tests/milters/testmilter.py inet:PORT@127.0.0.1 LOG [passive]

What it does is chosen by the local part of the sender (reject, tempfail,
custom, multiline, accept, discard, eomreject, eomtempfail, eomdiscard,
mods, skip, slow, stall), of a recipient (refuse, rcpttemp), by a Subject of
"reject me" and by a body holding BODYREJECT; otherwise it goes on and adds
"X-Test-Milter: seen" at the end of the message. It appends a JSON line to
LOG for every message it finishes or sees aborted: the macros it was given
at each stage, the header fields as bytes, the body's length, the
arguments of MAIL and RCPT.
"""

import json
import sys
import time

import Milter

LOG = sys.argv[2] if len(sys.argv) > 2 else "/dev/null"
# "passive": ignore the sender's wishes, always go on and add the header.
PASSIVE = len(sys.argv) > 3 and sys.argv[3] == "passive"

CONNECT_MACROS = (
    "j",
    "{daemon_name}",
    "{daemon_addr}",
    "v",
    "_",
    "{client_addr}",
    "{client_name}",
    "{client_port}",
)
MAIL_MACROS = ("i", "{mail_addr}", "{auth_type}", "{auth_authen}")


def _local(address):
    return address.strip("<>").partition("@")[0].lower()


class TestMilter(Milter.Base):
    def __init__(self):
        self.connectInfo = None
        self.macros = {}
        self._reset()

    def _reset(self):
        self.mode = ""
        self.mailArgs = []
        self.recipients = []
        self.headers = []
        self.bodyBytes = b""
        self.bodyChunks = 0

    def negotiate(self, opts):
        # Milter.Base.negotiate with the macro wish list set directly:
        # pymilter 1.0.5's setsymlist passes bytes where its C part wants
        # text under Python 3. At RCPT, {daemon_port} is sent only because
        # of this wish.
        self._actions, protocol, _, _ = opts
        self._ctx.setsymlist(Milter.M_ENVRCPT, "{rcpt_addr} {daemon_port}")
        opts[1] = self._protocol = protocol & ~self.protocol_mask()
        opts[2] = opts[3] = 0
        return Milter.CONTINUE

    def _symbols(self, stage, names):
        self.macros[stage] = {n: self.getsymval(n) for n in names}

    def _log(self, event):
        record = {
            "event": event,
            "mode": self.mode,
            "connect": self.connectInfo,
            "macros": self.macros,
            "mailArgs": self.mailArgs,
            "recipients": self.recipients,
            "headers": [[n.hex(), v.hex()] for n, v in self.headers],
            "bodyLength": len(self.bodyBytes),
            "bodyChunks": self.bodyChunks,
        }
        with open(LOG, "a") as out:
            out.write(json.dumps(record) + "\n")

    def connect(self, hostname, family, hostaddr):
        self.connectInfo = [hostname, str(hostaddr)]
        self._symbols("connect", CONNECT_MACROS)
        return Milter.CONTINUE

    def hello(self, name):
        self._symbols("helo", ("{tls_version}", "{cipher}"))
        return Milter.CONTINUE

    def envfrom(self, sender, *args):
        self._reset()
        self.mode = "plain" if PASSIVE else _local(sender)
        self.mailArgs = list(args)
        self._symbols("mail", MAIL_MACROS)
        mode = self.mode
        if mode == "reject":
            return Milter.REJECT
        if mode == "tempfail":
            return Milter.TEMPFAIL
        if mode == "custom":
            self.setreply("550", "5.7.1", "Go away, 100%% sure")
            return Milter.REJECT
        if mode == "multiline":
            self.setreply("451", "4.7.0", "first line", "second line")
            return Milter.TEMPFAIL
        if mode == "accept":
            return Milter.ACCEPT
        if mode == "discard":
            return Milter.DISCARD
        return Milter.CONTINUE

    def envrcpt(self, recipient, *args):
        self.recipients.append([recipient, list(args)])
        self._symbols("rcpt", ("{rcpt_addr}", "{daemon_port}"))
        local = _local(recipient)
        if local == "refuse":
            return Milter.REJECT
        if local == "rcpttemp":
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def header_bytes(self, name, value):
        self.headers.append((name.encode(), value))
        if name.lower() == "subject" and value == b"reject me":
            return Milter.REJECT
        return Milter.CONTINUE

    def header(self, name, value):
        # Overridden so that pymilter asks for headers (header_bytes does
        # the work under Python 3).
        return Milter.CONTINUE

    def data(self):
        self._symbols("data", ("i",))
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        self.bodyChunks += 1
        self.bodyBytes += chunk
        if self.mode == "skip":
            return Milter.SKIP
        if b"BODYREJECT" in chunk:
            return Milter.REJECT
        return Milter.CONTINUE

    def eom(self):
        self._symbols("eom", ("i",))
        mode = self.mode
        self._log("eom")
        if mode == "eomreject":
            return Milter.REJECT
        if mode == "eomtempfail":
            return Milter.TEMPFAIL
        if mode == "eomdiscard":
            return Milter.DISCARD
        if mode == "slow":
            for _ in range(4):
                time.sleep(0.5)
                self.progress()
        if mode == "stall":
            time.sleep(2)
        if mode == "mods":
            self.addheader("X-Added", "added value")
            self.addheader("X-Inserted", "at the top", 0)
            self.chgheader("Subject", 1, "changed subject")
            self.chgheader("X-Delete-Me", 1, "")
            self.replacebody(b"replaced ")
            self.replacebody(b"body\r\n")
            self.chgfrom("<new-sender@example.net>", "BODY=8BITMIME")
            self.addrcpt("<added@example.net>")
            self.addrcpt("<added-par@example.net>", "NOTIFY=NEVER")
            self.delrcpt("<deleted@example.org>")
            self.quarantine("held by the test milter")
            return Milter.ACCEPT
        self.addheader("X-Test-Milter", "seen")
        return Milter.CONTINUE

    def abort(self):
        self._log("abort")
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


def main():
    Milter.factory = TestMilter
    Milter.set_flags(
        Milter.ADDHDRS
        + Milter.CHGHDRS
        + Milter.CHGBODY
        + Milter.ADDRCPT
        + Milter.ADDRCPT_PAR
        + Milter.DELRCPT
        + Milter.CHGFROM
        + Milter.QUARANTINE
        + Milter.SETSYMLIST
    )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    Milter.runmilter("esmtpkit-test-milter", sys.argv[1], 60)


if __name__ == "__main__":
    main()
