"""Addresses, socket options and CurveZMQ keys shared by the broker, nodes and clients."""

from .addresses import BusAddress, is_loopback, resolve_bind_hosts, tcp_endpoint
from .sockets import (SocketReader, configure, keepalive_instead_of_heartbeats, readable, recv_frames,
                      send_frames, watch_connection)
from .curve import (CLIENT_KEY_ENV, SERVER_KEY_ENV, CurveClient, CurveServer,
                    generate_key_pair, load_public_key, load_secret_key)
from .errors import AddressError, KeyFileError, NetError

__all__ = ["configure", "keepalive_instead_of_heartbeats", "SocketReader", "watch_connection",
           "send_frames", "recv_frames", "readable",
           "BusAddress", "is_loopback", "resolve_bind_hosts", "tcp_endpoint",
           "CLIENT_KEY_ENV", "SERVER_KEY_ENV", "CurveClient", "CurveServer",
           "generate_key_pair", "load_public_key", "load_secret_key",
           "AddressError", "KeyFileError", "NetError"]
