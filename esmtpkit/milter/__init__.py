"""
The Sendmail milter protocol, both ways: L{wire} (packets and constants),
the milter server face (any handler as a milter inside Postfix or Sendmail)
and the milter client (existing milters called from esmtpkit).
"""
