"""A worker's bus thread: its poll loop (PollLoop) and its one connection to the broker
(WorkerLink, docs/protocol.md §3.1-3.4, §7), run in the test's own thread, against a
broker in this process (its own thread, loopback TCP, 0.1 s heartbeats) or a raw ROUTER
on the test's loop playing the broker where a test must send what no broker would."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from artiq_bus.net import BusAddress
from artiq_bus.protocol import (VERSION, DeadlineExceeded, NoSuchMethod, NoSuchService,
                                Overloaded, ProtocolError, RemoteError, Unavailable,
                                stream_topic)
from artiq_bus.protocol.publications import sync_topic
from artiq_bus.worker import link as link_module, warmup
from artiq_bus.worker.link import WorkerLink
from artiq_bus.worker.loop import _SWEEP_MIN, PollLoop

from conftest import free_port
from helpers.tcp_broker import BrokerThread, RawBroker, wait_on as wait, worker_bus_config

WAIT_S = 10.0
Future = concurrent.futures.Future


@pytest.fixture
def loop() -> Iterator[PollLoop]:
    poll_loop = PollLoop()
    yield poll_loop
    poll_loop.close()


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    with BrokerThread() as running:
        yield running


@pytest.fixture
def raw(loop: PollLoop, context: zmq.Context) -> RawBroker:
    return RawBroker(loop, context)


def raise_error(error: Exception) -> None:
    raise error


def settled(loop: PollLoop, future: "Future[Any]") -> "Future[Any]":
    wait(loop, future.done)
    return future


class OwnError(Exception):
    """An error type the bus knows nothing of."""


class Recorder:
    """A worker's methods: echoes, remembers in order what it was told, answers later."""

    def __init__(self, loop: PollLoop):
        self.loop, self.link = loop, None
        self.notes: list[Any] = []
        self.unanswered: list[Future[Any]] = []
        self.threads: list[threading.Thread] = []
        self.release = threading.Event()  # for the threads of from_thread

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {"echo": lambda x: x, "note": lambda x: self.notes.append(x) or x,
                "seen": lambda: self.notes, "later": self.later,
                "fail": lambda kind: raise_error(
                    KeyError("no such key") if kind == "key" else OwnError("mine")),
                "never": lambda: self.unanswered.append(Future()) or self.unanswered[-1],
                "from_thread": self.from_thread, "work": self.work, "stall": self.stall}

    def later(self, x: Any, delay: float) -> "Future[Any]":
        future: Future[Any] = Future()
        self.loop.call_later(delay, future.set_result, x)
        return future

    def from_thread(self, x: Any, error: bool = False) -> "Future[Any]":
        """Settled by a thread of its own once :attr:`release` is set."""
        future: Future[Any] = Future()

        def answer() -> None:
            self.release.wait(WAIT_S)
            future.set_exception(ValueError(x)) if error else future.set_result(x)
        self.threads.append(threading.Thread(target=answer))
        self.threads[-1].start()
        return future

    def work(self, count: int) -> str:
        """Tell ``other`` ``count`` notes, one way, then reply."""
        for i in range(count):
            self.link.send("other", "note", i)  # type: ignore[attr-defined]
        return "done"

    def stall(self, seconds: float) -> str:
        """Block the loop's thread, then again in the same turn, before the heartbeat
        that came due: as a thread starved of the GIL between its poll and its timers."""
        time.sleep(seconds)  # the point of this method: a stalled thread
        self.loop.call_soon(time.sleep, seconds)
        return "awake"


def serve(loop: PollLoop, context: zmq.Context, address: BusAddress, name: str,
          **options: Any) -> tuple[WorkerLink, Recorder]:
    """A registered link serving a :class:`Recorder`."""
    recorder = Recorder(loop)
    link = recorder.link = WorkerLink(loop, context, address, name, recorder.methods(),
                                      **options)
    link.connect()
    wait(loop, lambda: link.registered)
    return link, recorder


# -- the loop --------------------------------------------------------------------------

def test_call_soon_threadsafe_wakes_a_loop_blocked_in_its_poll(loop: PollLoop) -> None:
    """Hand-overs made while the loop waits in its poll (nothing due for 30 s) run at
    once and in order, one at a time or in a burst."""
    ran: list[int] = []
    turn = threading.Event()

    def other_thread() -> None:
        for i in range(50):
            loop.call_soon_threadsafe(lambda i=i: (ran.append(i), turn.set()))
            if not turn.wait(WAIT_S):
                return
            turn.clear()
        for i in range(50, 1050):
            loop.call_soon_threadsafe(ran.append, i)
    thread = threading.Thread(target=other_thread)
    start = time.monotonic()
    thread.start()
    assert loop.run_until(lambda: len(ran) == 1050, 30.0)
    thread.join(WAIT_S)
    assert ran == list(range(1050)) and time.monotonic() - start < 5.0


def test_timers_fire_in_order_and_cancelled_ones_never(loop: PollLoop) -> None:
    """By due time, ties in the order made, never early; a timer cancelled before its
    time (even by another timer) never fires; a late cancel is harmless.  run_until
    returns False at its deadline, which a far timer does not stretch."""
    fired: list[tuple[str, float]] = []
    start = time.monotonic()
    due = {"c": 0.06, "a": 0.02, "b": 0.04, "b2": 0.04, "now": 0.0, "end": 0.1}
    timers = {name: loop.call_later(delay, lambda n=name: fired.append(
        (n, time.monotonic() - start))) for name, delay in due.items()}
    for delay in (0.0, 0.03, 0.05):
        loop.call_later(delay, fired.append, ("cancelled", delay)).cancel()
    loop.call_later(0.01, loop.call_later(0.05, fired.append, ("victim", 0.05)).cancel)
    loop.call_later(30.0, fired.append, ("far", 30.0))
    assert loop.run_until(lambda: False, 0.3) is False
    assert 0.3 <= time.monotonic() - start < 1.3
    assert [name for name, _ in fired] == ["now", "a", "b", "b2", "c", "end"]
    assert all(at >= due[name] for name, at in fired)
    timers["a"].cancel()


def test_the_cancelled_timer_sweep_keeps_the_heap_small(loop: PollLoop) -> None:
    """Thousands of deadlines cancelled one by one, or made first and cancelled after,
    leave at most a sweep's worth in the heap; live timers still fire."""
    fired: list[str] = []
    live = [loop.call_later(0.05 + i / 1000, fired.append, f"live{i}") for i in range(10)]
    largest = 0
    for i in range(5000):
        loop.call_later(30.0 + i / 1000, fired.append, "cancelled").cancel()
        largest = max(largest, len(loop._timers))
    assert largest <= _SWEEP_MIN + 1 + len(live)
    for timer in [loop.call_later(30.0, fired.append, "cancelled") for _ in range(3000)]:
        timer.cancel()
    assert len(loop._timers) <= _SWEEP_MIN + len(live)
    wait(loop, lambda: len(fired) == len(live))
    assert fired == [f"live{i}" for i in range(10)]


def test_pipe_readers_and_failing_callbacks(
        loop: PollLoop, caplog: pytest.LogCaptureFixture) -> None:
    """A pipe's reader runs (with its arguments) when data comes, and no more once
    removed; a callback, timer or reader that raises is logged with its traceback and
    what comes after it still runs."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    ran: list[Any] = []

    def read(fd: int) -> None:
        ran.append(os.read(fd, 100))
        raise RuntimeError("reader")
    loop.add_reader(read_end, read, read_end)
    os.write(write_end, b"abc")
    loop.call_soon(raise_error, RuntimeError("soon"))
    loop.call_soon(ran.append, "soon")
    loop.call_later(0.01, raise_error, RuntimeError("timer"))
    loop.call_later(0.02, ran.append, "later")
    try:
        with caplog.at_level(logging.ERROR, logger="artiq_bus.worker.loop"):
            wait(loop, lambda: "later" in ran)
        loop.remove_reader(read_end)
        os.write(write_end, b"def")
        loop.call_soon(ran.append, "after")  # the reader would run first in its turn
        wait(loop, lambda: ran[-1] == "after")
        assert os.read(read_end, 100) == b"def"
    finally:
        os.close(read_end)
        os.close(write_end)
    assert ran == [b"abc", "soon", "later", "after"]
    assert sorted(str(record.exc_info[1]) for record in caplog.records
                  if record.exc_info) == ["reader", "soon", "timer"]


# -- a link and a broker ---------------------------------------------------------------

def test_registers_and_calls_others_and_itself_many_in_flight(
        loop: PollLoop, context: zmq.Context, broker: BrokerThread) -> None:
    """The service declares its methods and ping; 700 calls in flight to another service
    and to itself, answered out of order, match their replies, and their cancelled
    deadlines do not pile up."""
    other, _ = serve(loop, context, broker.address, "other")
    me, mine = serve(loop, context, broker.address, "me")
    services = settled(loop, me.request("broker", "services")).result()
    assert services["me"] == sorted([*mine.methods(), "ping"])
    rng = random.Random(20250101)
    calls = {(name, i): me.request(name, "later", [name, i],
                                   rng.choice([0.0, rng.uniform(0.0, 0.2)]))
             for i in range(300) for name in ("other", "me")}
    echoed = [me.request("me", "echo", i) for i in range(100)]
    wait(loop, lambda: all(f.done() for f in [*calls.values(), *echoed]))
    assert {key: f.result() for key, f in calls.items()} == {key: list(key) for key in calls}
    assert [f.result() for f in echoed] == list(range(100))
    assert me.unmatched_replies == me.bad_messages == other.bad_messages == 0
    assert len(loop._timers) <= _SWEEP_MIN + 10


def test_results_and_errors_of_methods_and_of_futures_settled_elsewhere(
        loop: PollLoop, context: zmq.Context, broker: BrokerThread) -> None:
    """Errors come back with their type; a method's Future settled by another thread
    while the loop waits in its poll wakes it, and its result or error is the reply."""
    _, other = serve(loop, context, broker.address, "other")
    me, _ = serve(loop, context, broker.address, "me")
    assert isinstance(settled(loop, me.request("other", "fail", "key")).exception(), KeyError)
    own = settled(loop, me.request("other", "fail", "own")).exception()
    assert isinstance(own, RemoteError) and own.remote_type == "OwnError"
    assert isinstance(settled(loop, me.request("other", "nope")).exception(), NoSuchMethod)
    assert isinstance(settled(loop, me.request("nobody", "x")).exception(), NoSuchService)
    calls = [me.request("other", "from_thread", i) for i in range(20)]
    failing = me.request("other", "from_thread", "bad", error=True)
    wait(loop, lambda: len(other.threads) == 21)
    loop.call_later(0.1, other.release.set)  # once the loop is back in its poll
    wait(loop, lambda: all(f.done() for f in [*calls, failing]))
    for thread in other.threads:
        thread.join(WAIT_S)
    assert [f.result() for f in calls] == list(range(20))
    assert isinstance(failing.exception(), ValueError) and failing.exception().args == ("bad",)


def test_messages_and_calls_keep_their_order_and_precede_the_reply(
        loop: PollLoop, context: zmq.Context, broker: BrokerThread) -> None:
    """One-way messages and calls to a service arrive in the order sent; who has the
    reply of ``me.work`` finds the notes ``me`` sent while serving it delivered."""
    _, other = serve(loop, context, broker.address, "other")
    me, _ = serve(loop, context, broker.address, "me")
    replies = [me.request("other", "note", i) if i % 5 == 0 else me.send("other", "note", i)
               for i in range(600)]
    seen = me.request("other", "seen")  # after the last note
    wait(loop, lambda: seen.done())
    assert [f.result(0) for f in replies if f] == list(range(0, 600, 5))
    assert seen.result() == list(range(600))
    outside, _ = serve(loop, context, broker.address, "outside")
    for _ in range(20):
        other.notes.clear()
        assert settled(loop, outside.request("me", "work", 50)).result() == "done"
        assert settled(loop, outside.request("other", "seen")).result() == list(range(50))


# -- deadlines -------------------------------------------------------------------------

def test_a_call_nobody_answers_fails_on_time(
        loop: PollLoop, context: zmq.Context, broker: BrokerThread) -> None:
    """DeadlineExceeded at its deadline; the service's answer after it is dropped, and
    the link goes on."""
    _, other = serve(loop, context, broker.address, "other")
    me, _ = serve(loop, context, broker.address, "me")
    start = time.monotonic()
    future = settled(loop, me.request("other", "never", timeout_s=0.3))
    assert isinstance(future.exception(), DeadlineExceeded)
    assert 0.3 <= time.monotonic() - start < 1.8
    other.unanswered[0].set_result("late")
    assert settled(loop, me.request("other", "echo", "after")).result() == "after"
    assert me.unmatched_replies <= 1 and me.bad_messages == 0 and not me.ended


def test_a_late_reply_is_counted_as_unmatched(
        loop: PollLoop, context: zmq.Context, raw: RawBroker) -> None:
    """A reply after the deadline is counted and dropped (a real broker's late reply is
    its own DeadlineExceeded, which races ours)."""
    link = raw.link(context)
    future = link.request("svc", "m", timeout_s=0.2)
    request_id = raw.receive()[2]
    assert isinstance(settled(loop, future).exception(), DeadlineExceeded)
    raw.send(b"REP", request_id, b"\x00", msgpack.packb("late"))
    wait(loop, lambda: link.unmatched_replies == 1)
    raw.assert_served(b"r1")
    assert link.bad_messages == 0 and not link.ended


# -- faults ----------------------------------------------------------------------------

def test_garbage_from_the_broker_is_counted_and_the_link_keeps_serving(
        loop: PollLoop, context: zmq.Context, raw: RawBroker) -> None:
    """Malformed messages are counted; requests it cannot serve get error replies; a
    reply with a bad status fails its call and counts as malformed; one for no call is
    counted as unmatched."""
    link = raw.link(context)
    garbage = [[b"ABUS0", b"HB"], [VERSION], [VERSION, b"BOGUS", b"1"],
               [VERSION, b"REP", b"\x00" * 8], [VERSION, b"REQ", b"caller", b"r"],
               [VERSION, b"MSG", b"caller"]]
    for frames in garbage:
        raw.send_raw(*frames)
    raw.assert_served(b"r0")
    raw.assert_served(b"r1", msgpack.packb({"not": "[args, kwargs]"}), "ProtocolError")
    raw.assert_served(b"r2", b"\xc1", "ProtocolError")
    raw.assert_served(b"r3", msgpack.packb([[], {}]), "NoSuchMethod", b"nope")
    future = link.request("svc", "m")
    raw.send(b"REP", raw.receive()[2], b"\x07", msgpack.packb(1))
    assert isinstance(settled(loop, future).exception(), ProtocolError)
    raw.send(b"REP", b"\xff" * 8, b"\x00", msgpack.packb(1))
    raw.assert_served(b"r4")
    assert (link.unmatched_replies, link.bad_messages, link.ended) == (
        1, len(garbage) + 1, False)


@pytest.mark.parametrize("bye", [(b"BYE",), (b"BYE", b"me")], ids=["plain", "taken-over"])
def test_bye_ends_the_link_and_fails_its_calls(
        loop: PollLoop, context: zmq.Context, raw: RawBroker, bye: tuple[bytes, ...]) -> None:
    """Calls in flight fail with Unavailable at once, later ones raise it."""
    link = raw.link(context)
    calls = [link.request("svc", "m", timeout_s=60.0) for _ in range(5)]
    raw.send(*bye)
    wait(loop, lambda: all(f.done() for f in calls), 5.0)
    assert link.ended and all(isinstance(f.exception(), Unavailable) for f in calls)
    with pytest.raises(Unavailable):
        link.request("svc", "m")
    with pytest.raises(Unavailable):
        link.send("svc", "m")


def test_a_silent_broker_ends_the_link_within_the_liveness_bound(
        loop: PollLoop, context: zmq.Context, raw: RawBroker) -> None:
    """Heartbeats every 0.05 s, liveness 4: ended (its calls failed) 0.2 s after the
    broker's last word (give or take a loaded machine), heartbeating meanwhile."""
    link = raw.link(context, heartbeat_interval_s=0.05, liveness=4)
    calls = [link.request("svc", "m", timeout_s=60.0) for _ in range(3)]
    wait(loop, lambda: link.ended, 5.0)
    assert 0.2 < time.monotonic() - raw.last_sent < 1.2 and raw.heartbeats >= 1
    assert all(isinstance(f.exception(0), Unavailable) for f in calls)


def test_a_blocked_loop_thread_does_not_end_the_link_while_the_broker_speaks(
        loop: PollLoop, context: zmq.Context, broker: BrokerThread) -> None:
    """The loop's thread stalls twice for 3 liveness periods, the second time between a
    poll and the heartbeat check: the broker's messages waiting unread count as heard."""
    me, _ = serve(loop, context, broker.address, "me", heartbeat_interval_s=0.1, liveness=4)
    assert settled(loop, me.request("me", "stall", 1.2)).result() == "awake"
    assert settled(loop, me.request("me", "echo", 1)).result() == 1 and not me.ended


def test_a_full_queue_raises_overloaded_without_blocking(
        loop: PollLoop, context: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """No broker listens: calls queue up to the limit, then raise (and leave no call
    in flight); so do one-way messages."""
    monkeypatch.setattr(link_module, "_QUEUE_LIMIT", 8)
    address = BusAddress.from_host("127.0.0.1", free_port(), free_port(), free_port())
    link = WorkerLink(loop, context, address, "me", {})
    link.connect()
    start, accepted = time.monotonic(), []
    with pytest.raises(Overloaded):
        while len(accepted) < 1000:
            accepted.append(link.request("svc", "m"))
    with pytest.raises(Overloaded):
        link.send("svc", "m")
    assert time.monotonic() - start < 1.0 and len(link._pending) == len(accepted) < 100


def test_calls_cannot_be_cancelled_once_sent_and_all_fail_at_the_end(
        loop: PollLoop, context: zmq.Context, raw: RawBroker) -> None:
    """Only the link settles a call it sent (``cancel()`` refuses), so its end fails
    every call in flight; a future cancelled before its call left is not sent."""
    link = raw.link(context)
    calls = [link.request("svc", "m", timeout_s=60.0) for _ in range(3)]
    assert not calls[0].cancel()
    withdrawn: concurrent.futures.Future[Any] = concurrent.futures.Future()
    assert withdrawn.cancel()
    assert link.request_packed("svc", "m", b"\x92\x90\x80", [], future=withdrawn) is withdrawn
    raw.send(b"BYE")
    wait(loop, lambda: link.ended)
    assert loop.run_until(lambda: all(f.done() for f in calls), 1.0)
    for call in calls:
        with pytest.raises(Unavailable):
            call.result(timeout=0)
    assert withdrawn.cancelled()


# -- publications ----------------------------------------------------------------------

def test_the_first_publications_of_a_fresh_link_arrive_in_order(
        loop: PollLoop, context: zmq.Context, broker: BrokerThread) -> None:
    """Held until the broker's subscription reaches the new publication socket, then
    delivered in order, and later ones after them."""
    topic, probe = stream_topic("ccb"), sync_topic(os.urandom(8).hex().encode())
    subscriber = context.socket(zmq.SUB)
    subscriber.connect(broker.address.notify)
    subscriber.subscribe(topic)
    subscriber.subscribe(probe)  # docs/protocol.md §6.4
    received: list[list[bytes]] = []
    loop.add_reader(subscriber, lambda: received.append(subscriber.recv_multipart()))
    wait(loop, lambda: received)
    assert received.pop()[0] == probe  # our subscription is active at the broker
    me, _ = serve(loop, context, broker.address, "me")
    for i in range(50):
        me.publish([topic, VERSION, msgpack.packb(i)])
    assert me.publications_held
    wait(loop, lambda: len(received) == 50)
    assert not me.publications_held
    for i in range(50, 60):
        me.publish([topic, VERSION, msgpack.packb(i)])
    wait(loop, lambda: len(received) == 60)
    assert [msgpack.unpackb(frames[2]) for frames in received] == list(range(60))


# -- the zygote's rehearsal -----------------------------------------------------------

def test_the_zygote_rehearsal_gives_up_soon_when_the_broker_says_bye(
        loop: PollLoop, raw: RawBroker) -> None:
    """A broker that acknowledges the registration and then says ``BYE``: the round
    fails within its step bound (it once waited for ever), leaving no thread."""
    threads = set(threading.enumerate())
    went_through: list[bool] = []
    rehearsal = threading.Thread(target=lambda: went_through.append(
        warmup._rehearse_bus(worker_bus_config(raw.address))), daemon=True)
    rehearsal.start()
    try:
        raw.accept()
        raw.send(b"BYE")
    finally:
        rehearsal.join(warmup._BUS_STEP_S + 3.0)
    assert not rehearsal.is_alive() and went_through == [False]
    assert set(threading.enumerate()) - threads == set()
