"""The broker: routing by service name, the service registry, heartbeats, pub/sub
forwarding.  It knows no experiment concepts."""

from .broker import BROKER_SERVICE, Broker, BrokerConfig

__all__ = ["BROKER_SERVICE", "Broker", "BrokerConfig"]
