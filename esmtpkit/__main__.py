"""
C{python -m esmtpkit [OPTIONS]}: run the server in the foreground, with the
options of C{twistd esmtpkit} (C{--help} lists them).

C{python -m esmtpkit scram USER [ITERATIONS]}: print a SCRAM-SHA-256
verifier line for C{--auth scram-file:PATH} (the password is read from the
terminal, or from standard input). See L{esmtpkit.cli}.
"""

import sys

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
