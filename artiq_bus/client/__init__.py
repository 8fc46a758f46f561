"""Clients of the bus: blocking and asyncio calls, subscriptions, replicas."""

from .aio import AsyncClient, ServiceProxy
from .replica import Replica
from .subscriber import Subscriber
from .sync import Client

__all__ = ["AsyncClient", "ServiceProxy", "Replica", "Subscriber", "Client"]
