"""A ZMTP 3.0 peer on a plain TCP socket: speaks to a ZeroMQ socket without libzmq.

For frames no libzmq peer would send (over-long subscriptions, which would also crash
the sender's own libzmq; reserved flag bits; lengths beyond any limit).
"""

from __future__ import annotations

import errno
import socket
import struct

__all__ = ["GREETING", "frame", "connect", "wait_hung_up"]

#: A ZMTP 3.0 greeting with the NULL mechanism, as a client sends it.
GREETING = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32


def frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) > 255:
        return bytes([flags | 2]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += (chunk := sock.recv(n - len(data)))
        assert chunk, "the peer hung up during the handshake"
    return data


def connect(host: str, port: int, socket_type: bytes, timeout_s: float) -> socket.socket:
    """Connected, greeted and READY: messages may follow."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    sock.sendall(GREETING + frame(ready, command=True))
    _recv_exact(sock, len(GREETING))
    flags = _recv_exact(sock, 1)[0]  # the peer's READY
    size = struct.unpack(">Q", _recv_exact(sock, 8))[0] if flags & 2 else _recv_exact(sock, 1)[0]
    _recv_exact(sock, size)
    return sock


def wait_hung_up(sock: socket.socket, send: bytes, *, shut_write: bool = False) -> None:
    """Send ``send`` (then EOF), and read until the peer closes the connection (within
    the socket's timeout)."""
    try:
        sock.sendall(send)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except ConnectionError:
        pass  # it hung up while we were still talking
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:  # ... even before our EOF
            raise
