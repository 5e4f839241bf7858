"""
The milter benchmark's esmtpkit handler: looks at every header (keeps the
Subject) and adds one header at EOM; the same work as
bench/peers/pymilter_bench.py.

    twistd -n esmtpkit --handler esmtpkit_milter.HeaderEOMMilter \
        -p milter:tcp:PORT:interface=127.0.0.1
"""

from esmtpkit import ESMTPHandler


class HeaderEOMMilter(ESMTPHandler):
    __slots__ = ("subject",)

    def HEADER(self, name, value):
        if name.lower() == "subject":
            self.subject = value

    def EOM(self):
        self.session.transaction.modifications.addHeader("X-Bench", "seen")
