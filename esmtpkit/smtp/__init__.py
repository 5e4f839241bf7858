"""
The SMTP wire (and LMTP, on the same commands): framing, command syntax and
SMTP policy over the conversation core.
"""
