"""
TLS for esmtpkit: L{ServerTLS} loads a certificate chain and key from PEM
files, builds the server context with Twisted's secure defaults, and can
reload the files (on SIGHUP) without dropping connections; the same object
serves STARTTLS (RFC 3207) and implicit TLS listeners (RFC 8314).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

from ..session import TLSInfo

__all__ = ["ServerTLS", "TLSConfigurationError", "tlsInfo", "TLS_VERSIONS"]

log = Logger(namespace="esmtpkit")

TLS_VERSIONS = {
    "1.2": TLSVersion.TLSv1_2,
    "1.3": TLSVersion.TLSv1_3,
}
"""
The lowest TLS versions that C{--tls-min-version} accepts.
"""

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S
)


class TLSConfigurationError(ValueError):
    """
    The certificate, key or CA files cannot be used.
    """


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The server side of TLS, for STARTTLS and for implicit TLS listeners.

    @ivar certPath: the PEM file with the certificate, then any chain.
    @ivar keyPath: the PEM file with the private key (may be C{certPath}).
    @ivar clientCAPath: PEM file of CAs whose client certificates are
        requested and verified (optional for the client), or L{None}.
    @ivar minimumVersion: the lowest TLS version accepted, C{"1.2"} or
        C{"1.3"}.
    """

    def __init__(
        self,
        certPath: str,
        keyPath: str | None = None,
        minimumVersion: str = "1.2",
        clientCAPath: str | None = None,
    ) -> None:
        """
        Load the files now.

        @raise TLSConfigurationError: a file is missing or not usable.
        """
        if minimumVersion not in TLS_VERSIONS:
            raise TLSConfigurationError(
                f"TLS minimum version {minimumVersion!r} is not one of "
                + ", ".join(TLS_VERSIONS)
            )
        self.certPath = certPath
        self.keyPath = keyPath or certPath
        self.minimumVersion = minimumVersion
        self.clientCAPath = clientCAPath
        self._context = self._load()

    def _load(self) -> SSL.Context:
        certs = _readCertificates(self.certPath)
        try:
            with open(self.keyPath, "rb") as f:
                key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
        except OSError as e:
            raise TLSConfigurationError(f"{self.keyPath}: {e.strerror}") from None
        except crypto.Error:
            raise TLSConfigurationError(
                f"{self.keyPath}: no usable PEM private key"
            ) from None
        caCerts = _readCertificates(self.clientCAPath) if self.clientCAPath else None
        options = CertificateOptions(
            privateKey=key,
            certificate=certs[0],
            extraCertChain=certs[1:],
            raiseMinimumTo=TLS_VERSIONS[self.minimumVersion],
            verify=caCerts is not None,
            caCerts=caCerts,
            requireCertificate=False,
        )
        try:
            with warnings.catch_warnings():
                # CertificateOptions hands pyOpenSSL objects to pyOpenSSL,
                # which newer releases deprecate; nothing for us to change.
                warnings.filterwarnings(
                    "ignore", "Passing pyOpenSSL", DeprecationWarning
                )
                context: SSL.Context = options.getContext()
            context.check_privatekey()
        except SSL.Error:
            raise TLSConfigurationError(
                f"{self.keyPath} does not match the certificate in {self.certPath}"
            ) from None
        return context

    def reload(self) -> bool:
        """
        Read the files again. New connections use them; connections already
        open keep theirs. On error the old files stay in use.

        @return: whether the new files are in use.
        """
        try:
            self._context = self._load()
        except TLSConfigurationError as e:
            log.error("TLS files not reloaded, the old ones stay: {error}", error=e)
            return False
        log.info("TLS files reloaded from {cert}", cert=self.certPath)
        return True

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)


def _readCertificates(path: str) -> list[crypto.X509]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TLSConfigurationError(f"{path}: {e.strerror}") from None
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise TLSConfigurationError(f"{path}: no PEM certificate")
    try:
        return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error:
        raise TLSConfigurationError(f"{path}: a certificate cannot be read") from None


def tlsInfo(transport: Any) -> TLSInfo | None:
    """
    What the session should know of an established TLS layer, read from the
    transport's OpenSSL connection.
    """
    handle = transport.getHandle()
    version = getattr(handle, "get_protocol_version_name", None)
    if version is None:
        return None
    peer = handle.get_peer_certificate()
    return TLSInfo(
        version=version(),
        cipher=handle.get_cipher_name() or "",
        peerCertificate=peer.to_cryptography() if peer is not None else None,
    )
