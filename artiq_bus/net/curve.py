"""CurveZMQ: the broker's key pair, the allow-list of clients, and clients' keys.

Key files are ZeroMQ certificate files as ``zmq.auth.create_certificates`` writes them:
``NAME.key`` holds the public key (give it away), ``NAME.key_secret`` both keys (keep
it).  The broker loads its ``.key_secret`` and a directory of allowed clients' ``.key``
files; a client loads the broker's ``.key`` and its own ``.key_secret``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import KeyFileError

__all__ = ["CurveServer", "CurveClient", "generate_key_pair", "load_public_key",
           "load_secret_key", "SERVER_KEY_ENV", "CLIENT_KEY_ENV"]

#: Environment variables a client reads when no flag names its key files.
SERVER_KEY_ENV = "ARTIQ_BUS_SERVER_KEY"
CLIENT_KEY_ENV = "ARTIQ_BUS_CLIENT_KEY"


def generate_key_pair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` in ``directory``; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None


def load_public_key(path: str | Path) -> bytes:
    return _load(path)[0]


def load_secret_key(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


@dataclasses.dataclass
class CurveServer:
    """The broker side: its key pair and the directory of allowed client keys."""

    public: bytes
    secret: bytes
    allowed_dir: Path
    _auth: ThreadAuthenticator | None = None

    @classmethod
    def load(cls, secret_file: str | Path, allowed_dir: str | Path) -> "CurveServer":
        public, secret = load_secret_key(secret_file)
        allowed = Path(allowed_dir)
        if not allowed.is_dir():
            raise KeyFileError(f"allowed client keys directory {allowed} does not exist")
        if not any(allowed.glob("*.key")):
            raise KeyFileError(f"no client public keys (*.key) in {allowed}")
        return cls(public, secret, allowed)

    def start(self, context: zmq.Context) -> None:
        """Start the ZAP handler that checks client keys against the allow-list."""
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(self.allowed_dir))

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True


@dataclasses.dataclass(frozen=True)
class CurveClient:
    """The client side: the broker's public key and the client's own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_key: str | None, client_key: str | None) -> "CurveClient | None":
        """Keys from flags, else from the environment; ``None`` when neither is set."""
        server_key = server_key or os.environ.get(SERVER_KEY_ENV) or None
        client_key = client_key or os.environ.get(CLIENT_KEY_ENV) or None
        if server_key is None and client_key is None:
            return None
        if server_key is None or client_key is None:
            raise KeyFileError("CurveZMQ needs both the server's public key and the "
                               f"client's secret key ({SERVER_KEY_ENV}, {CLIENT_KEY_ENV})")
        public, secret = load_secret_key(client_key)
        return cls(load_public_key(server_key), public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
