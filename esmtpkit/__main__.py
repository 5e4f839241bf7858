"""
C{python -m esmtpkit scram USER [ITERATIONS]}: print a SCRAM-SHA-256 verifier
line for C{--auth scram-file:PATH} (the password is read from the terminal,
or from standard input).
"""

import sys

from .security.scram import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["scram"]:
        print("usage: python -m esmtpkit scram USER [ITERATIONS]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[2:]))
