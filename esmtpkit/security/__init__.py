"""
TLS certificates and SASL authentication (twisted.cred, SCRAM).
"""
