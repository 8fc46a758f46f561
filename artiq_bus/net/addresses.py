"""Where the broker listens and how peers reach it.

The broker has three sockets (docs/protocol.md): ``control`` (ROUTER, requests),
``publish`` (XSUB, nodes publish into it) and ``notify`` (XPUB, subscribers read it).
Default ports follow ARTIQ's: control 3251, notify 3250; publish 3252 is new.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import urllib.parse

from .errors import AddressError

__all__ = ["BusAddress", "tcp_endpoint", "is_loopback", "resolve_bind_hosts",
           "DEFAULT_CONTROL_PORT", "DEFAULT_NOTIFY_PORT", "DEFAULT_PUBLISH_PORT",
           "LOOPBACK_HOSTS"]

DEFAULT_CONTROL_PORT = 3251
DEFAULT_NOTIFY_PORT = 3250
DEFAULT_PUBLISH_PORT = 3252
LOOPBACK_HOSTS = ("127.0.0.1", "::1")


def tcp_endpoint(host: str, port: int) -> str:
    """A ZeroMQ TCP endpoint; IPv6 literals get brackets."""
    if host == "*":
        return f"tcp://*:{port}"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def _check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise AddressError(f"port {port} is not in 1..65535")
    return port


@dataclasses.dataclass(frozen=True)
class BusAddress:
    """The three endpoints of one broker, as a peer connects to them."""

    control: str
    notify: str
    publish: str

    @classmethod
    def from_host(cls, host: str, control_port: int = DEFAULT_CONTROL_PORT,
                  notify_port: int = DEFAULT_NOTIFY_PORT,
                  publish_port: int = DEFAULT_PUBLISH_PORT) -> "BusAddress":
        if not host:
            raise AddressError("empty host name")
        host = host.strip("[]")
        return cls(tcp_endpoint(host, _check_port(control_port)),
                   tcp_endpoint(host, _check_port(notify_port)),
                   tcp_endpoint(host, _check_port(publish_port)))

    @classmethod
    def from_url(cls, url: str) -> "BusAddress":
        """``tcp://HOST[:CONTROL_PORT]`` (the ``--broker`` flag of standalone nodes)."""
        parsed = urllib.parse.urlsplit(url if "://" in url else "tcp://" + url)
        if parsed.scheme != "tcp" or not parsed.hostname:
            raise AddressError(f"broker address must look like tcp://HOST:PORT, not {url!r}")
        try:
            port = parsed.port or DEFAULT_CONTROL_PORT
        except ValueError:
            raise AddressError(f"bad port in {url!r}") from None
        return cls.from_host(parsed.hostname, port)

    def with_ports(self, notify_port: int, publish_port: int) -> "BusAddress":
        """The same host with the publication ports the broker reported."""
        host = urllib.parse.urlsplit(self.control).hostname or "127.0.0.1"
        control_port = urllib.parse.urlsplit(self.control).port or DEFAULT_CONTROL_PORT
        return BusAddress.from_host(host, control_port, notify_port, publish_port)

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.control).hostname or self.control


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address."""
    if host in ("*", ""):
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


#: Wildcard hosts and the loopback addresses they already cover: binding both on one
#: port fails (EADDRINUSE).  ZeroMQ's IPv6 sockets are dual-stack, so ``*`` and ``::``
#: cover IPv4 as well.
_WILDCARD_COVERS: dict[str, tuple[str, ...]] = {
    "*": LOOPBACK_HOSTS, "::": LOOPBACK_HOSTS, "0.0.0.0": ("127.0.0.1",)}


def resolve_bind_hosts(extra: list[str], localhost: bool = True) -> list[str]:
    """The hosts to bind: loopback (unless told not to) plus ``--bind`` hosts."""
    hosts = list(LOOPBACK_HOSTS) if localhost else []
    for host in extra:
        host = host.strip("[]")
        if host not in hosts:
            hosts.append(host)
    if not hosts:
        raise AddressError("nothing to bind: give --bind HOST or drop --no-localhost-bind")
    covered = {loopback for host in hosts for loopback in _WILDCARD_COVERS.get(host, ())}
    return [host for host in hosts if host not in covered]
