"""
Helpers for the TLS and AUTH tests: a small PKI generated with
C{cryptography} and written as PEM files into a temporary directory, TLS
client contexts, an in-memory transport that can start TLS, an in-process
server on the real reactor, and a SCRAM-SHA-256 client (RFC 5802, RFC 7677)
written independently of C{esmtpkit.security.scram}, so that the server's mechanism
is checked against a second implementation.

Every network helper talks to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import os
import smtplib
import socket
import ssl
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import StringTransportWithDisconnection
from zope.interface import alsoProvides, implementer

from esmtpkit import ESMTPHandler
from esmtpkit.reply import Reply
from esmtpkit.testing import SMTPTestConnection, parseReplies

LOOPBACK = "127.0.0.1"

# ---------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------


def _name(commonName: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "esmtpkit tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName),
        ]
    )


def _newKey() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _makeCA(
    commonName: str, issuer: _Issuer | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _newKey()
    subject = _name(commonName)
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(days=1))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256()), key


def _makeLeaf(
    issuer: _Issuer,
    commonName: str,
    *,
    server: bool,
    expired: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _newKey()
    if expired:
        notBefore = _now() - datetime.timedelta(days=60)
        notAfter = _now() - datetime.timedelta(days=30)
    else:
        notBefore = _now() - datetime.timedelta(days=1)
        notAfter = _now() + datetime.timedelta(days=30)
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(commonName))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer.key, hashes.SHA256()), key


def certPEM(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """
    The SHA-256 fingerprint (hex) of a certificate or of its DER bytes.
    """
    der = (
        cert
        if isinstance(cert, bytes)
        else cert.public_bytes(serialization.Encoding.DER)
    )
    return hashlib.sha256(der).hexdigest()


@dataclass
class PKI:
    """
    PEM files of a test PKI, all in C{directory}.

    @ivar caCert: the trusted root CA.
    @ivar serverCert: server certificate for "localhost" (SAN DNS:localhost,
        IP:127.0.0.1), signed by the CA; key in C{serverKey}.
    @ivar serverCertB: a second such certificate (for reload tests).
    @ivar chainCert: a server certificate signed by an intermediate CA,
        followed by the intermediate (key in C{chainKey}); clients trust
        only the root.
    @ivar clientCert: client certificate (CN client.example) signed by the
        CA.
    @ivar untrustedClientCert: client certificate signed by another CA.
    @ivar expiredClientCert: client certificate signed by the CA, expired.
    @ivar otherKey: a private key that matches none of the certificates.
    @ivar garbage: a file that is not PEM at all.
    """

    directory: Path
    caCert: Path
    serverCert: Path
    serverKey: Path
    serverCertB: Path
    serverKeyB: Path
    chainCert: Path
    chainKey: Path
    clientCert: Path
    clientKey: Path
    untrustedClientCert: Path
    untrustedClientKey: Path
    expiredClientCert: Path
    expiredClientKey: Path
    otherKey: Path
    garbage: Path
    fingerprintA: str
    fingerprintB: str


def makePKI(directory: Path) -> PKI:
    """
    Generate the test PKI and write its PEM files into C{directory}.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    caCert, caKey = _makeCA("esmtpkit test root CA")
    ca = _Issuer(caCert, caKey)
    interCert, interKey = _makeCA("esmtpkit test intermediate CA", ca)
    inter = _Issuer(interCert, interKey)
    rogueCert, rogueKey = _makeCA("some other CA")
    rogue = _Issuer(rogueCert, rogueKey)

    serverA, serverAKey = _makeLeaf(ca, "localhost", server=True)
    serverB, serverBKey = _makeLeaf(ca, "localhost", server=True)
    chained, chainedKey = _makeLeaf(inter, "localhost", server=True)
    client, clientKey = _makeLeaf(ca, "client.example", server=False)
    untrusted, untrustedKey = _makeLeaf(rogue, "client.example", server=False)
    expired, expiredKey = _makeLeaf(ca, "client.example", server=False, expired=True)

    return PKI(
        directory=directory,
        caCert=write("ca.pem", certPEM(caCert)),
        serverCert=write("server.pem", certPEM(serverA)),
        serverKey=write("server.key", keyPEM(serverAKey)),
        serverCertB=write("server-b.pem", certPEM(serverB)),
        serverKeyB=write("server-b.key", keyPEM(serverBKey)),
        chainCert=write("chain.pem", certPEM(chained) + certPEM(interCert)),
        chainKey=write("chain.key", keyPEM(chainedKey)),
        clientCert=write("client.pem", certPEM(client)),
        clientKey=write("client.key", keyPEM(clientKey)),
        untrustedClientCert=write("untrusted.pem", certPEM(untrusted)),
        untrustedClientKey=write("untrusted.key", keyPEM(untrustedKey)),
        expiredClientCert=write("expired.pem", certPEM(expired)),
        expiredClientKey=write("expired.key", keyPEM(expiredKey)),
        otherKey=write("other.key", keyPEM(_newKey())),
        garbage=write("garbage.pem", b"this is not a PEM file\n\x00\x01\x02\n"),
        fingerprintA=fingerprint(serverA),
        fingerprintB=fingerprint(serverB),
    )


def clientContext(
    pki: PKI,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    lowSecurity: bool = False,
) -> ssl.SSLContext:
    """
    A verifying client context that trusts the test CA, optionally with a
    client certificate and a restricted range of TLS versions.

    @param lowSecurity: let OpenSSL speak TLS 1.0/1.1 at all (security
        level 0), so that a refusal can only come from the peer.
    """
    context = ssl.create_default_context(cafile=str(pki.caCert))
    if lowSecurity:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


# ---------------------------------------------------------------------------
# In-memory STARTTLS
# ---------------------------------------------------------------------------


@dataclass
class FakeTLSHandle:
    """
    Stands in for an OpenSSL connection once the fake handshake is done.
    """

    version: str = "TLSv1.3"
    cipher: str = "TLS_AES_256_GCM_SHA384"
    peer: Any = None

    def get_protocol_version_name(self) -> str:
        return self.version

    def get_cipher_name(self) -> str:
        return self.cipher

    def get_peer_certificate(self) -> Any:
        return self.peer


@implementer(ITLSTransport)
class TLSStringTransport(StringTransportWithDisconnection):
    """
    A L{StringTransportWithDisconnection} that can start TLS: C{startTLS}
    calls are recorded (with what was written before them), and
    L{completeHandshake} pretends the handshake succeeded.

    @ivar startTLSCalls: the context factories passed to C{startTLS}.
    @ivar writtenBeforeTLS: the output written before the first
        C{startTLS} call.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.startTLSCalls: list[Any] = []
        self.writtenBeforeTLS: bytes | None = None
        self._handle: FakeTLSHandle | None = None

    def startTLS(self, contextFactory: Any) -> None:
        if self.writtenBeforeTLS is None:
            self.writtenBeforeTLS = self.value()
        self.startTLSCalls.append(contextFactory)

    def getHandle(self) -> Any:
        return self._handle

    def completeHandshake(self, handle: FakeTLSHandle | None = None) -> None:
        """
        Mark the transport encrypted (as Twisted does) and tell the
        protocol the handshake is over.
        """
        self._handle = handle or FakeTLSHandle()
        alsoProvides(self, ISSLTransport)
        protocol: Any = self.protocol
        protocol.handshakeCompleted()

    # The rest of ITCPTransport, unused by the protocol.

    def loseWriteConnection(self) -> None:
        self.loseConnection()

    def getTcpNoDelay(self) -> bool:
        return False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass


class TLSTestConnection(SMTPTestConnection):
    """
    L{SMTPTestConnection} over a L{TLSStringTransport}, for STARTTLS and
    AUTH tests without sockets.
    """

    transport: TLSStringTransport
    transportFactory = TLSStringTransport

    def starttls(self, handle: FakeTLSHandle | None = None) -> Any:
        """
        Send STARTTLS; if the server answers 220 and starts TLS, complete
        the fake handshake. Return the reply.
        """
        calls = len(self.transport.startTLSCalls)
        reply = self.command("STARTTLS")
        if reply.code == 220 and len(self.transport.startTLSCalls) == calls + 1:
            self.transport.completeHandshake(handle)
        return reply


# ---------------------------------------------------------------------------
# SCRAM-SHA-256 client (RFC 5802 section 3 and 5, RFC 7677)
# ---------------------------------------------------------------------------


class ScramError(Exception):
    """
    The server's SCRAM messages are wrong (bad nonce, bad signature...).
    """


def _hmacSHA256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _saslName(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramSHA256Client:
    """
    The client side of one SCRAM-SHA-256 exchange without channel binding.

        client = ScramSHA256Client("user", "pencil")
        first = client.first()                  # send
        final = client.final(serverFirst)       # send
        client.verify(serverFinal)              # raises ScramError if forged
    """

    def __init__(self, username: str, password: str, nonce: str | None = None) -> None:
        self.username = username
        self.password = password
        self.nonce = nonce or base64.b64encode(os.urandom(24)).decode("ascii")
        self._gs2 = "n,,"
        self._firstBare = ""
        self._authMessage = b""
        self._saltedPassword = b""

    def first(self) -> bytes:
        """
        The client-first-message.
        """
        self._firstBare = f"n={_saslName(self.username)},r={self.nonce}"
        return (self._gs2 + self._firstBare).encode("utf-8")

    def final(self, serverFirst: bytes) -> bytes:
        """
        The client-final-message (with the proof) for C{serverFirst}.

        @raise ScramError: the server-first-message is not acceptable.
        """
        text = serverFirst.decode("utf-8")
        attributes = {}
        for part in text.split(","):
            if len(part) < 2 or part[1] != "=":
                raise ScramError(f"bad attribute {part!r}")
            attributes[part[0]] = part[2:]
        if text.startswith("m="):
            raise ScramError("mandatory extension")
        nonce, salt, iterations = (attributes.get(k) for k in ("r", "s", "i"))
        if nonce is None or salt is None or iterations is None:
            raise ScramError("server-first-message lacks r, s or i")
        if not nonce.startswith(self.nonce) or len(nonce) <= len(self.nonce):
            raise ScramError("server nonce does not extend the client nonce")
        if not iterations.isdigit() or int(iterations) < 1:
            raise ScramError("bad iteration count")
        self._saltedPassword = hashlib.pbkdf2_hmac(
            "sha256",
            unicodedata.normalize("NFKC", self.password).encode("utf-8"),
            base64.b64decode(salt, validate=True),
            int(iterations),
        )
        channelBinding = base64.b64encode(self._gs2.encode("utf-8")).decode("ascii")
        withoutProof = f"c={channelBinding},r={nonce}"
        self._authMessage = ",".join((self._firstBare, text, withoutProof)).encode(
            "utf-8"
        )
        clientKey = _hmacSHA256(self._saltedPassword, b"Client Key")
        storedKey = hashlib.sha256(clientKey).digest()
        clientSignature = _hmacSHA256(storedKey, self._authMessage)
        proof = base64.b64encode(_xor(clientKey, clientSignature)).decode("ascii")
        return f"{withoutProof},p={proof}".encode("ascii")

    def expectedServerSignature(self) -> bytes:
        serverKey = _hmacSHA256(self._saltedPassword, b"Server Key")
        return _hmacSHA256(serverKey, self._authMessage)

    def verify(self, serverFinal: bytes) -> None:
        """
        Check the server-final-message.

        @raise ScramError: it is an error, or the server signature is wrong
            (the server does not know the verifier).
        """
        text = serverFinal.decode("utf-8")
        if text.startswith("e="):
            raise ScramError(f"server error {text[2:]}")
        if not text.startswith("v="):
            raise ScramError(f"bad server-final-message {text!r}")
        signature = base64.b64decode(text[2:].split(",")[0], validate=True)
        if not hmac.compare_digest(signature, self.expectedServerSignature()):
            raise ScramError("server signature mismatch")


def scramLogin(smtp: Any, username: str, password: str) -> tuple[int, bytes]:
    """
    AUTH SCRAM-SHA-256 over an C{smtplib.SMTP} connection (after EHLO), with
    the server signature checked.

    @return: the final reply (code, text).
    @raise ScramError: the server's signature is wrong.
    """
    client = ScramSHA256Client(username, password)
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    code, text = smtp.docmd("AUTH", "SCRAM-SHA-256 " + b64(client.first()))
    if code != 334:
        return code, text
    code, text = smtp.docmd(b64(client.final(base64.b64decode(text))))
    if code != 334:
        return code, text
    client.verify(base64.b64decode(text))
    code, text = smtp.docmd("")
    return code, text


_shared: PKI | None = None


def sharedPKI() -> PKI:
    """
    One read-only PKI for the tests that do not change its files, made on
    first use in a temporary directory that is removed when Python exits.
    """
    global _shared
    if _shared is None:
        import atexit
        import shutil
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix="esmtpkit-pki-"))
        atexit.register(shutil.rmtree, directory, True)
        _shared = makePKI(directory)
    return _shared


# ---------------------------------------------------------------------------
# A blocking client over real sockets (for threads or subprocess tests)
# ---------------------------------------------------------------------------


class RawClient:
    """
    A line-level SMTP client on a socket to 127.0.0.1, which can start TLS
    (or speak TLS from the start) and report the server's certificate.
    Every read is bounded by C{timeout}.
    """

    def __init__(
        self,
        port: int,
        timeout: float = 10.0,
        implicit: ssl.SSLContext | None = None,
        hostname: str = "localhost",
    ) -> None:
        self.timeout = timeout
        self.buffer = b""
        self.sock: Any = socket.create_connection((LOOPBACK, port), timeout=timeout)
        if implicit is not None:
            self.sock = implicit.wrap_socket(self.sock, server_hostname=hostname)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int = 1) -> list[Any]:
        """
        Read until C{count} complete replies have arrived.

        @raise EOFError: the server closed the connection first.
        @raise TimeoutError: they did not arrive in time.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            replies, rest = parseReplies(self.buffer)
            if len(replies) >= count:
                self.buffer = rest
                return replies
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply in time; got {self.buffer!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; got {self.buffer!r}")
            self.buffer += chunk

    def command(self, line: str) -> Any:
        self.send(line.encode("utf-8") + b"\r\n")
        return self.replies(1)[0]

    def starttls(self, context: ssl.SSLContext, hostname: str = "localhost") -> Any:
        """
        STARTTLS; on 220, the TLS handshake. Return the reply.
        """
        reply = self.command("STARTTLS")
        if reply.code == 220:
            assert not self.buffer, "data after the 220 reply"
            self.sock = context.wrap_socket(self.sock, server_hostname=hostname)
        return reply

    def peerFingerprint(self) -> str:
        return fingerprint(self.sock.getpeercert(binary_form=True))

    def readUntilClosed(self) -> tuple[bytes, bool]:
        """
        Everything until the server closes (or the timeout).

        @return: the bytes, and whether the server closed.
        """
        deadline = time.monotonic() + self.timeout
        data, self.buffer = self.buffer, b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return data, False
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return data, True
            except TimeoutError:
                return data, False
            if not chunk:
                return data, True
            data += chunk

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# A handler that shows what it knows (for twistd --handler)
# ---------------------------------------------------------------------------


def _commonName(cert: Any) -> str:
    if cert is None:
        return "-"
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "?"


class TLSInfoHandler(ESMTPHandler):
    """
    Answers NOOP with what the session knows about TLS and AUTH:
    C{250 2.0.0 tls=VERSION cipher=NAME peer=CN auth=IDENTITY} (C{-} for
    none), so that tests can see the handler's view through twistd.
    """

    def NOOP(self) -> Any:
        tls = self.session.tls
        return Reply(
            250,
            f"tls={tls.version if tls else '-'} cipher={tls.cipher if tls else '-'} "
            f"peer={_commonName(tls.peerCertificate if tls else None)} "
            f"auth={self.session.authenticated or '-'}",
            enhanced="2.0.0",
        )


def smtpLogin(
    port: int,
    method: str,
    user: str,
    password: str,
    ssl_: bool = False,
    context: ssl.SSLContext | None = None,
) -> tuple[int, str]:
    """
    Log in over STARTTLS (or implicit TLS) with one mechanism (C{PLAIN},
    C{LOGIN}, C{SCRAM-SHA-256}, or C{AUTO} for smtplib's choice); return
    the final reply. C{context} defaults to one trusting L{sharedPKI}.
    """
    context = context or clientContext(sharedPKI())
    if ssl_:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            LOOPBACK, port, timeout=10, context=context
        )
    else:
        smtp = smtplib.SMTP(LOOPBACK, port, timeout=10)
    try:
        smtp.ehlo("client.example")
        if not ssl_:
            smtp.starttls(context=context)
            smtp.ehlo("client.example")
        text: bytes | str
        if method == "SCRAM-SHA-256":
            code, text = scramLogin(smtp, user, password)
        elif method == "AUTO":
            try:
                code, text = smtp.login(user, password)
            except smtplib.SMTPAuthenticationError as e:
                code, text = e.smtp_code, e.smtp_error
        else:
            smtp.user, smtp.password = user, password
            mechanism = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login}[method]
            try:
                code, text = smtp.auth(method, mechanism)
            except smtplib.SMTPAuthenticationError as e:
                code, text = e.smtp_code, e.smtp_error
        return code, text.decode() if isinstance(text, bytes) else text
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


# ---------------------------------------------------------------------------
# AUTH helpers
# ---------------------------------------------------------------------------


def b64(data: bytes | str) -> str:
    """
    Base64 of C{data} (text is UTF-8 encoded first), as text.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def plain(user: str, password: str, authzid: str = "") -> str:
    """
    A SASL PLAIN message (RFC 4616), base64-encoded.
    """
    return b64(f"{authzid}\0{user}\0{password}")


def memoryChecker(**users: str) -> InMemoryUsernamePasswordDatabaseDontUse:
    """
    An in-memory checker with C{users} (name=password), stored as bytes as
    SASL gives them.
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for user, password in users.items():
        checker.addUser(user.encode("utf-8"), password.encode("utf-8"))
    return checker
