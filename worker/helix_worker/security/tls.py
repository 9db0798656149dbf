"""The cluster's mutual TLS: one member's certificate, key and the cluster CA, as gRPC
credentials and as `ssl` contexts for the data channel.

Servers require a client certificate the CA signed; clients accept only a server whose
certificate the CA signed and that names `MEMBER_NAME` (see `issuing`). Without
HELIX_TLS_* a process refuses to start unless HELIX_PLAINTEXT says the network is trusted.

Renewed files take effect without a restart, for every new connection: the files are
stat()ed whenever a connection is made (gRPC's dynamic server credentials ask before each
handshake; the data channel's listener swaps in the current context as a handshake begins,
from its SNI callback; channels and data channels to peers are built from the current
files) and read again when one of them changed. Kubernetes updates a mounted Secret by
swapping a symlink, so the three files change at once; a set that does not load (a key that
is not the certificate's, a half-written file) keeps the last good one in use until a good
set arrives. Connections already open keep the certificates they were made with.
"""

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from helix_worker.envs import Settings, env_name
from helix_worker.errors import ServingError
from helix_worker.security.issuing import CA_FILE, CERT_FILE, KEY_FILE, MEMBER_NAME
from helix_worker.security.reloading import Reloading

log = logging.getLogger(__name__)
HANDSHAKE_SECONDS = 10.0


@dataclass(frozen=True)
class _Material:
    """One loaded set of files, as bytes (gRPC) and as `ssl` contexts (the data channel)."""

    cert: bytes
    key: bytes
    ca: bytes | None
    server: ssl.SSLContext
    client: ssl.SSLContext | None


def _server_context(cert: Path, key: Path, ca: Path | None,
                    current: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """A server context whose handshakes switch to `current()` (the files as they are now) as
    they begin: a listener keeps the context it was made with, so this is how it renews."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED

    def renew(connection: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _context: ssl.SSLContext) -> None:
        newest = current()
        if newest is not connection.context:
            connection.context = newest  # certificate, key and CA store of the newest files

    context.sni_callback = renew  # called for every ClientHello, with or without a server name
    return context


@dataclass(frozen=True)
class ClusterTLS:
    cert: Path
    key: Path
    ca: Path
    _files: Reloading[_Material] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        files = Reloading((self.cert, self.key, self.ca), self._load, "the cluster's TLS files")
        object.__setattr__(self, "_files", files)

    def __reduce__(self) -> tuple[type["ClusterTLS"], tuple[Path, Path, Path]]:
        """Pickled as its paths (a process it is handed to loads the files itself)."""
        return type(self), (self.cert, self.key, self.ca)

    @classmethod
    def from_dir(cls, directory: Path) -> "ClusterTLS":
        """The files of a cert-manager style directory (tls.crt, tls.key, ca.crt)."""
        return cls(directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE)

    def _load(self) -> _Material:
        server = _server_context(self.cert, self.key, self.ca, lambda: self._files.current().server)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        client.load_cert_chain(self.cert, self.key)
        client.load_verify_locations(cafile=self.ca)
        return _Material(self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes(), server, client)

    def load(self) -> None:
        """Load the files now; raises OSError or ssl.SSLError if they do not make a member identity."""
        self._files.current()

    def server_credentials(self) -> grpc.ServerCredentials:
        """Requires a client certificate the CA signed; each new connection gets the current files."""
        return _renewing_credentials(self._files, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For a new channel: the current files (a channel keeps them for its life)."""
        now = self._files.current()
        return grpc.ssl_channel_credentials(root_certificates=now.ca, private_key=now.key, certificate_chain=now.cert)

    @staticmethod
    def channel_options() -> list[tuple[str, str]]:
        """Check the server's certificate against the members' name, not the address dialled."""
        return [("grpc.ssl_target_name_override", MEMBER_NAME)]

    def server_context(self) -> ssl.SSLContext:
        """For a listener: each handshake uses the files as they are when it begins."""
        return self._files.current().server

    def client_context(self) -> ssl.SSLContext:
        """Verifies the server against the CA and `MEMBER_NAME` (pass it as server_hostname)."""
        return self._files.current().client  # type: ignore[return-value]


def _renewing_credentials(files: Reloading[_Material], *, require_client_auth: bool) -> grpc.ServerCredentials:
    """gRPC server credentials that ask `files` before every handshake (gRPC calls the fetcher
    for each new connection) and serve the new files once they changed."""
    def configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], root_certificates=material.ca)

    served = [files.current()]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        now = files.current()
        if now is served[0]:
            return None  # unchanged: gRPC keeps the configuration it has
        served[0] = now
        return configuration(now)

    # gRPC takes None for "no change" (its stubs say otherwise)
    return grpc.dynamic_ssl_server_credentials(configuration(served[0]), fetch,  # type: ignore[arg-type]
                                               require_client_authentication=require_client_auth)


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
        tls.load()
    except (OSError, ssl.SSLError) as err:
        raise ServingError(f"cannot load the TLS files {', '.join(paths.values())}: {err}") from None
    return tls


@dataclass(frozen=True)
class ClientTLS:
    """Server-side TLS of the front end's client endpoints (no client certificates asked),
    renewed like the cluster's: each new connection gets the files as they are then."""

    cert: Path
    key: Path
    _files: Reloading[_Material] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_files", Reloading((self.cert, self.key), self._load, "the client TLS files"))

    def __reduce__(self) -> tuple[type["ClientTLS"], tuple[Path, Path]]:
        """Pickled as its paths, like `ClusterTLS`."""
        return type(self), (self.cert, self.key)

    def _load(self) -> _Material:
        server = _server_context(self.cert, self.key, None, lambda: self._files.current().server)
        return _Material(self.cert.read_bytes(), self.key.read_bytes(), None, server, None)

    def server_credentials(self) -> grpc.ServerCredentials:
        return _renewing_credentials(self._files, require_client_auth=False)

    def server_context(self) -> ssl.SSLContext:
        return self._files.current().server


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
