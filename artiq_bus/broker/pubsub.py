"""The publication path: XSUB (nodes publish in) → XPUB (subscribers read out).

Forwarding runs in ZeroMQ's own C proxy on a thread of its own, so publications never
wait for Python.  The XSUB side subscribes to everything: nodes never filter, the XPUB
side filters per subscriber, and ZeroMQ drops messages for a subscriber whose queue is
full (the overload policy; sequence numbers let the subscriber notice and resync).

A subscriber that must know when its subscriptions are active (to take a snapshot
without a race, the Clone pattern) also subscribes to ``sync\\0TOKEN``.  Subscriptions
travel through the proxy to an XPUB the broker holds on its own loop; when that sees
``sync\\0TOKEN`` it publishes an empty message on that topic.  ZeroMQ keeps one
connection's subscriptions in order, so when the subscriber receives it, every
subscription it made before is active.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid

import zmq

from ..net import SocketReader, configure
from ..protocol import VERSION

__all__ = ["PublicationProxy"]

logger = logging.getLogger(__name__)

_SYNC_PREFIX = b"\x01sync\x00"


class PublicationProxy:
    """Owns the XSUB/XPUB pair (closed by :meth:`stop`), the proxy thread and the
    subscription-probe answerer."""

    def __init__(self, context: zmq.Context, xsub: zmq.Socket, xpub: zmq.Socket):
        self._context = context
        self._xsub, self._xpub = xsub, xpub
        self._control_endpoint = f"inproc://artiq_bus.proxy-control.{uuid.uuid4().hex}"
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._control: zmq.Socket | None = None
        self._prober: zmq.Socket | None = None

    def start(self, xsub_inproc: str) -> None:
        self._xsub.send(b"\x01")  # subscribe to everything upstream
        control_server = configure(self._context.socket(zmq.PAIR))
        control_server.bind(self._control_endpoint)
        self._control = configure(self._context.socket(zmq.PAIR))
        self._control.connect(self._control_endpoint)
        self._thread = threading.Thread(target=self._run, args=(control_server,),
                                        name="artiq_bus-pubsub-proxy", daemon=True)
        self._thread.start()
        # No high-water mark towards the prober: at one, the XSUB would drop the probes of
        # a burst of subscriptions (of many subscribers, or of one flooding us).
        self._prober = configure(self._context.socket(zmq.XPUB), rcvhwm=0)
        self._prober.connect(xsub_inproc)
        self._task = asyncio.create_task(self._answer_probes(self._prober))

    def _run(self, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(self._xsub, self._xpub, None, control)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:
            logger.error("publication proxy stopped: %s", exc)
        finally:
            control.close()

    async def _answer_probes(self, prober: zmq.Socket) -> None:
        reader = SocketReader(prober)
        try:
            while True:
                for frames in await reader.recv_batch(copy=True):
                    message = frames[0]
                    if message.startswith(_SYNC_PREFIX):
                        prober.send_multipart([message[1:], VERSION, b""], zmq.NOBLOCK)
                reader.after_send()
        finally:
            reader.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._control is not None:
            self._control.send(b"TERMINATE")
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join, 5.0)
            self._control.close()
        if self._prober is not None:
            self._prober.close()
        if self._thread is None or not self._thread.is_alive():
            # The pair is the proxy's: closed once its thread is done with them (a
            # socket must not be closed under a thread that uses it), or the context's
            # term() would wait for them for ever.
            self._xsub.close()
            self._xpub.close()
        else:
            logger.error("publication proxy: thread still running 5 s after TERMINATE; "
                         "its sockets are left open")
