"""The cluster's mutual TLS: one member's certificate, key and the cluster CA, as gRPC
credentials and as `ssl` contexts for the data channel.

Servers require a client certificate the CA signed; clients accept only a server whose
certificate the CA signed and that names `MEMBER_NAME` (see `issuing`). Without
HELIX_TLS_* a process refuses to start unless HELIX_PLAINTEXT says the network is trusted.
"""

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from helix_worker.envs import Settings, env_name
from helix_worker.errors import ServingError
from helix_worker.security.issuing import CA_FILE, CERT_FILE, KEY_FILE, MEMBER_NAME

log = logging.getLogger(__name__)
HANDSHAKE_SECONDS = 10.0


@dataclass(frozen=True)
class ClusterTLS:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_dir(cls, directory: Path) -> "ClusterTLS":
        """The files of a cert-manager style directory (tls.crt, tls.key, ca.crt)."""
        return cls(directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE)

    def _read(self) -> tuple[bytes, bytes, bytes]:
        """Read at each use, so that a renewed certificate serves the next connection."""
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

    def server_credentials(self) -> grpc.ServerCredentials:
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    @staticmethod
    def channel_options() -> list[tuple[str, str]]:
        """Check the server's certificate against the members' name, not the address dialled."""
        return [("grpc.ssl_target_name_override", MEMBER_NAME)]

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        context.load_verify_locations(cafile=self.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self) -> ssl.SSLContext:
        """Verifies the server against the CA and `MEMBER_NAME` (pass it as server_hostname)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        context.load_verify_locations(cafile=self.ca)
        return context


def cluster_tls(settings: Settings) -> ClusterTLS | None:
    """The member identity HELIX_TLS_CERT, HELIX_TLS_KEY and HELIX_TLS_CA name (all three, each
    readable), or None when none is set and HELIX_PLAINTEXT allows it; anything else is an error."""
    paths = {name: getattr(settings, name) for name in ("tls_cert", "tls_key", "tls_ca")}
    given = [name for name, path in paths.items() if path]
    if not given:
        if settings.plaintext:
            log.warning("%s: the stage network runs without TLS or authentication", env_name("plaintext"))
            return None
        raise ServingError(f"no TLS for the stage network: set {', '.join(env_name(n) for n in paths)} (`helix up` "
                           f"and the operator do), or {env_name('plaintext')}=1 on a network you trust")
    if settings.plaintext:
        raise ServingError(f"{env_name('plaintext')} is set together with {env_name(given[0])}: choose one")
    if len(given) < len(paths):
        missing = [env_name(n) for n in paths if n not in given]
        raise ServingError(f"{', '.join(missing)} must be set too: mutual TLS needs a certificate, its key and the CA")
    tls = ClusterTLS(Path(paths["tls_cert"]), Path(paths["tls_key"]), Path(paths["tls_ca"]))
    try:
        tls.server_context()
    except (OSError, ssl.SSLError) as err:
        raise ServingError(f"cannot load the TLS files {', '.join(paths.values())}: {err}") from None
    return tls


@dataclass(frozen=True)
class ClientTLS:
    """Server-side TLS of the front end's client endpoints (no client certificates asked)."""

    cert: Path
    key: Path

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())])

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context


def client_tls(settings: Settings) -> ClientTLS | None:
    """HELIX_CLIENT_TLS_CERT and HELIX_CLIENT_TLS_KEY (both or neither), checked to load."""
    cert, key = settings.client_tls_cert, settings.client_tls_key
    if not cert and not key:
        return None
    if not cert or not key:
        raise ServingError(f"set both {env_name('client_tls_cert')} and {env_name('client_tls_key')}, or neither")
    tls = ClientTLS(Path(cert), Path(key))
    try:
        tls.server_context()
    except (OSError, ssl.SSLError) as err:
        raise ServingError(f"cannot load the client TLS files {cert}, {key}: {err}") from None
    return tls
