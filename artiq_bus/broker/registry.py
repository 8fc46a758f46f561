"""The broker's bookkeeping: registered services and the requests in flight to them.

Pure data structures, no sockets: the broker asks and acts on the answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from ..protocol import Liveness

__all__ = ["ServiceEntry", "InFlight", "Registry"]

#: (caller identity, request id): the key of a request in flight.
RequestKey = tuple[bytes, bytes]


@dataclasses.dataclass
class ServiceEntry:
    """One registered service: its name, the peer that serves it, what it declared."""

    name: str
    identity: bytes
    methods: frozenset[str]
    last_seen: float
    liveness: Liveness = Liveness.HEARTBEAT
    in_flight: set[RequestKey] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class InFlight:
    """A request forwarded to a service and not yet answered."""

    service: ServiceEntry
    expiry: float
    method: str
    timeout_s: float

    def deadline_error(self) -> str:
        """What its caller is told when the deadline passes: the words a caller's own
        deadline uses, so that the message does not depend on which of the two fires
        first."""
        return (f"{self.service.name}.{self.method}: no reply within {self.timeout_s:g} s "
                f"(deadline passed at the broker)")


class Registry:
    """Services by name and by peer identity, and requests in flight.

    Bounded: at most ``max_services`` services and ``max_in_flight`` requests.
    """

    def __init__(self, max_services: int = 10_000, max_in_flight: int = 100_000):
        self.max_services = max_services
        self.max_in_flight = max_in_flight
        self._by_name: dict[str, ServiceEntry] = {}
        self._by_identity: dict[bytes, ServiceEntry] = {}
        self._in_flight: dict[RequestKey, InFlight] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def services(self) -> Iterator[ServiceEntry]:
        return iter(list(self._by_name.values()))

    def by_name(self, name: str) -> ServiceEntry | None:
        return self._by_name.get(name)

    def by_identity(self, identity: bytes) -> ServiceEntry | None:
        return self._by_identity.get(identity)

    def full(self) -> bool:
        return len(self._by_name) >= self.max_services

    def register(self, name: str, identity: bytes, methods: frozenset[str], now: float,
                 liveness: Liveness = Liveness.HEARTBEAT,
                 ) -> tuple[ServiceEntry | None, list[RequestKey]]:
        """Register ``name`` at ``identity`` (a peer serves one service).

        Returns the entry of another peer that served ``name`` before (it is replaced:
        a restarted service registers before its old self is noticed dead) and the
        requests that peer still owed, which have failed.
        """
        owed: list[RequestKey] = []
        previous = self._by_identity.get(identity)
        if previous is not None and previous.name != name:
            owed += self.unregister(previous)
        replaced = self._by_name.get(name)
        if replaced is not None and replaced.identity == identity:
            replaced.methods, replaced.last_seen, replaced.liveness = methods, now, liveness
            return None, owed
        if replaced is not None:
            owed += self.unregister(replaced)
        entry = ServiceEntry(name, identity, methods, now, liveness)
        self._by_name[name] = entry
        self._by_identity[identity] = entry
        return replaced, owed

    def unregister(self, entry: ServiceEntry) -> list[RequestKey]:
        """Forget ``entry``; return the requests it still owed an answer."""
        if self._by_name.get(entry.name) is entry:
            del self._by_name[entry.name]
        if self._by_identity.get(entry.identity) is entry:
            del self._by_identity[entry.identity]
        return self.drop_requests(entry)

    def drop_requests(self, entry: ServiceEntry) -> list[RequestKey]:
        owed = list(entry.in_flight)
        for key in owed:
            self._in_flight.pop(key, None)
        entry.in_flight.clear()
        return owed

    def in_flight_full(self) -> bool:
        return len(self._in_flight) >= self.max_in_flight

    def add_request(self, key: RequestKey, entry: ServiceEntry, method: str,
                    timeout_s: float, now: float) -> None:
        self._in_flight[key] = InFlight(entry, now + timeout_s, method, timeout_s)
        entry.in_flight.add(key)

    def complete_request(self, key: RequestKey, identity: bytes) -> bool:
        """Forget a request answered by ``identity``; False if it was not owed by it."""
        flight = self._in_flight.get(key)
        if flight is None or flight.service.identity != identity:
            return False
        del self._in_flight[key]
        flight.service.in_flight.discard(key)
        return True

    def expired_requests(self, now: float) -> list[tuple[RequestKey, InFlight]]:
        """Forget and return the requests whose caller's deadline has passed."""
        expired = [(key, flight) for key, flight in self._in_flight.items()
                   if flight.expiry <= now]
        for key, flight in expired:
            del self._in_flight[key]
            flight.service.in_flight.discard(key)
        return expired

    def silent_services(self, since: float) -> list[ServiceEntry]:
        """The services judged by their heartbeats that were last heard before ``since``."""
        return [entry for entry in self._by_name.values()
                if entry.last_seen < since and entry.liveness is Liveness.HEARTBEAT]
