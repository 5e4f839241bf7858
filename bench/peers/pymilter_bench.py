"""
The milter benchmark's pymilter peer (Debian's python3-milter, on Sendmail's
libmilter; run with /usr/bin/python3): the same work as
bench/peers/esmtpkit_milter.py's HeaderEOMMilter -- look at every header,
keep the Subject, add one header at end of body.

    /usr/bin/python3 bench/peers/pymilter_bench.py inet:PORT@127.0.0.1
"""

import sys

import Milter


class HeaderEOMMilter(Milter.Base):
    def __init__(self):
        self.subject = None

    @Milter.noreply
    def header(self, name, value):
        if name.lower() == "subject":
            self.subject = value
        return Milter.CONTINUE

    def eom(self):
        self.addheader("X-Bench", "seen")
        return Milter.ACCEPT


def main():
    socket = sys.argv[1] if len(sys.argv) > 1 else "inet:8894@127.0.0.1"
    Milter.factory = HeaderEOMMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("pymilterbench", socket, 240)


if __name__ == "__main__":
    main()
