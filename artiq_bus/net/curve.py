"""CurveZMQ: the broker's key pair, the allow-list of clients, and clients' keys.

Key files are ZeroMQ certificate files as ``zmq.auth.create_certificates`` writes them:
``NAME.key`` holds the public key (give it away), ``NAME.key_secret`` both keys (keep
it).  The broker loads its ``.key_secret`` and a directory of allowed clients' ``.key``
files; a client loads the broker's ``.key`` and its own ``.key_secret``.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

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


def _is_key(key: bytes) -> bool:
    """Whether ``key`` is a CurveZMQ key as certificate files hold it: 40 Z85 characters."""
    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (KeyError, ValueError, struct.error):  # KeyError: not a Z85 character
        return False


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None
    if not _is_key(public) or (secret is not None and not _is_key(secret)):
        raise KeyFileError(f"key file {path} is malformed: a CurveZMQ key is 40 Z85 "
                           "characters (make key files with artiq_keygen)")
    return public, secret


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
    _extra: set[bytes] = dataclasses.field(default_factory=set)

    @classmethod
    def load(cls, secret_file: str | Path, allowed_dir: str | Path) -> "CurveServer":
        public, secret = load_secret_key(secret_file)
        allowed = Path(allowed_dir)
        if not allowed.is_dir():
            raise KeyFileError(f"allowed client keys directory {allowed} does not exist")
        key_files = sorted(allowed.glob("*.key"))
        if not key_files:
            raise KeyFileError(f"no client public keys (*.key) in {allowed}")
        for key_file in key_files:  # ZeroMQ's authenticator refuses everyone on a bad one
            load_public_key(key_file)
        return cls(public, secret, allowed)

    def allow(self, public_key: bytes) -> None:
        """Also accept this client key (the master's own worker processes); before start."""
        self._extra.add(public_key)

    def start(self, context: zmq.Context) -> None:
        """Start the ZAP handler that checks client keys against the allow-list."""
        allowed = {load_public_key(path) for path in self.allowed_dir.glob("*.key")}
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*",
                                            credentials_provider=_AllowList(allowed | self._extra))

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True


class _AllowList:
    """The ZAP handler's question: is this (Z85) client key allowed?"""

    def __init__(self, keys: set[bytes]):
        self._keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self._keys


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

    @classmethod
    def for_worker(cls, server: "CurveServer") -> "CurveClient":
        """A fresh key pair that ``server`` accepts, for the master's own workers."""
        public, secret = zmq.curve_keypair()
        server.allow(public)
        return cls(server.public, public, secret)

    def to_wire(self) -> list[str]:
        """The three keys as text (Z85), to hand to a child process."""
        return [key.decode() for key in (self.server_public, self.public, self.secret)]

    @classmethod
    def from_wire(cls, keys: list[str]) -> "CurveClient":
        server_public, public, secret = (key.encode() for key in keys)
        return cls(server_public, public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
