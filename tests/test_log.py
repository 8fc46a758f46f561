"""The log: records from other processes reach the master's console, its log file,
``artiq_client show log`` (backlog, then live) and a standalone log node.

Records come from ``helpers/bus_logger.py``: a process on the bus that logs through a
:class:`~artiq_bus.runtime.logs.BusLogHandler` with the source ``worker(1,test.py)``.
"""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from artiq_bus.client.sync import Client
from artiq_bus.protocol import VERSION, Command, pack, stream_topic, sync_topic, unpack

from conftest import Master, Process

HELPER = Path(__file__).parent / "helpers" / "bus_logger.py"
SOURCE = "worker(1,test.py)"
SOURCE_RE = re.escape(SOURCE)
BACKLOG_SIZE = 1000  # LogNode's default
WAIT_S = 10.0


@pytest.fixture(scope="module")
def shared_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """One master for the tests that only add records (each copes with the others')."""
    process = Master(tmp_path_factory.mktemp("log-master")).wait_ready()
    yield process
    assert process.stop() == 0, process.output()


def log_from_worker(master: Master, *args: str) -> None:
    """Run the helper to its end: by then the log service has taken its records."""
    result = subprocess.run(
        [sys.executable, str(HELPER), str(master.control), str(master.notify),
         str(master.publish), "--source", SOURCE, *args],
        capture_output=True, text=True, timeout=30.0, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout == "done\n", result


def record(text: str, **changes: Any) -> dict[str, Any]:
    return {"level": 20, "source": "test", "time": time.time(), "name": "test",
            "message": text, **changes}


def show_log(master: Master, tmp_path: Path) -> Process:
    return Process([sys.executable, "-m", "artiq_bus.frontend.artiq_client", "-s", "127.0.0.1",
                    "--port", str(master.control), "show", "log"], tmp_path)


def client_line(level: str, message: str) -> str:
    """``show log``'s format: ``LEVEL source mm/dd HH:MM:SS message``."""
    return (rf"^{level}\s+{SOURCE_RE}\s+\d\d/\d\d \d\d:\d\d:\d\d {re.escape(message)}$")


def stop_follower(follower: Process) -> None:
    follower.signal(signal.SIGINT)
    assert follower.wait() == 0, follower.output()
    assert "Traceback" not in follower.output(), follower.output()


def test_show_log_backlog_then_live(shared_master: Master, tmp_path: Path) -> None:
    log_from_worker(shared_master, "--count", "3", "--prefix", "backlog-")
    follower = show_log(shared_master, tmp_path)
    try:
        for i in range(3):  # the backlog, in order
            follower.wait_for_line(client_line("INFO", f"backlog-{i}"))
        log_from_worker(shared_master, "--count", "2", "--prefix", "live-", "--level", "WARNING")
        for i in range(2):
            follower.wait_for_line(client_line("WARNING", f"live-{i}"))
        stop_follower(follower)
    finally:
        follower.stop()
    assert len(re.findall("backlog-0", follower.output())) == 1  # not again from the stream


def emit_then_error(dealer: zmq.Socket) -> None:
    """Register a service (the broker logs that at INFO), then make the log service log
    an ERROR: when the ERROR is on the console, the INFO record would be before it."""
    dealer.send_multipart([VERSION, Command.REGISTER.value, b"log-test-service",
                           pack({"methods": ["nothing"]})[0]])
    assert dealer.recv_multipart()[1] == Command.ACK.value
    dealer.send_multipart([VERSION, Command.BYE.value])
    dealer.send_multipart([VERSION, Command.MESSAGE.value, b"log", b"emit",
                           pack([["not a list of records"], {}])[0]])


@pytest.mark.parametrize("verbosity", ["-q", None, "-v"])
def test_master_console(tmp_path: Path, verbosity: str | None) -> None:
    """Forwarded records are printed whatever the master's level; its own INFO records
    (at start-up and forwarded from the broker later) only with -v."""
    master = Master(tmp_path, *([verbosity] if verbosity else [])).wait_ready()
    try:
        log_from_worker(master, "--count", "1", "--prefix", "debug-", "--level", "DEBUG")
        log_from_worker(master, "--count", "1", "--prefix", "info-")
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as dealer:
            dealer.linger = 0
            dealer.rcvtimeo = int(WAIT_S * 1000)
            dealer.connect(master.address.control)
            emit_then_error(dealer)
            master.wait_for_line(r"^ERROR:master:artiq_bus\.runtime\.service:service log: "
                                 r"one-way message failed: TypeError: emit takes a list")
        output = master.output()
        assert re.search(rf"^DEBUG:{SOURCE_RE}:helper:debug-0$", output, re.M), output
        assert re.search(rf"^INFO:{SOURCE_RE}:helper:info-0$", output, re.M), output
        own_info = [line for line in output.splitlines() if line.startswith("INFO:master:")]
        registered = any("'log-test-service' registered" in line for line in own_info)
        assert bool(own_info) == registered == (verbosity == "-v"), output
    finally:
        assert master.stop() == 0, master.output()


def test_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "master.log"
    master = Master(tmp_path, "--log-file", str(log_file)).wait_ready()
    try:
        before = time.time()
        log_from_worker(master, "--count", "2", "--prefix", "file-", "--level", "WARNING")
    finally:
        assert master.stop() == 0, master.output()  # the writer thread has finished
    lines = log_file.read_text().splitlines()
    for i, line in enumerate(lines[-2:]):
        match = re.fullmatch(rf"(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d),\d{{3}} "
                             rf"WARNING:{SOURCE_RE}:helper:file-{i}", line)
        assert match, lines
        logged = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S"))
        assert before - 2 <= logged <= time.time(), line  # the record's time, local


def subscribe_log(ctx: zmq.Context, master: Master) -> zmq.Socket:
    """A SUB on the log stream, its subscription known to be active."""
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvtimeo = int(WAIT_S * 1000)
    sub.subscribe(stream_topic("log"))
    sub.subscribe(sync_topic(b"log-test"))
    sub.connect(master.address.notify)
    assert sub.recv_multipart()[0] == sync_topic(b"log-test")
    return sub


def next_items(sub: zmq.Socket) -> tuple[int, int, list[dict[str, Any]]]:
    topic, version, body, *buffers = sub.recv_multipart()
    assert (topic, version) == (stream_topic("log"), VERSION)
    epoch, first, items = unpack(body, buffers)
    return epoch, first, items


def read_stream(sub: zmq.Socket, epoch: int, after: int, until: int) -> list[dict[str, Any]]:
    """The records numbered ``after + 1`` to ``until`` from the stream, all of them (the
    stream may also carry older ones: a late joiner skips those)."""
    records: list[dict[str, Any]] = []
    while after + len(records) < until:
        item_epoch, first, items = next_items(sub)
        assert item_epoch == epoch
        for seq, item in enumerate(items, first):
            assert seq <= after + len(records) + 1, f"record {seq} came before a lost one"
            if seq == after + len(records) + 1:
                records.append(item)
    return records


def test_backlog_bounded(shared_master: Master) -> None:
    """More records than the backlog holds: it keeps the newest (last), its ``seq``
    numbers the last, and it agrees with the stream (whatever else is logged)."""
    total = BACKLOG_SIZE + 500
    with zmq.Context() as ctx, subscribe_log(ctx, shared_master) as sub, \
            Client(shared_master.address, context=ctx) as client:
        start = client.call("log", "backlog", timeout_s=WAIT_S)
        log_from_worker(shared_master, "--count", str(total), "--prefix", "bulk-")
        backlog = client.call("log", "backlog", timeout_s=WAIT_S)
        epoch = start["epoch"]
        streamed = read_stream(sub, epoch, start["seq"], backlog["seq"])
        assert backlog["epoch"] == epoch and len(backlog["records"]) == BACKLOG_SIZE
        assert backlog["records"] == (start["records"] + streamed)[-BACKLOG_SIZE:]
        bulk = [r["message"] for r in streamed if r["source"] == SOURCE]
        assert bulk == [f"bulk-{i}" for i in range(total)]
        newest = client.call("log", "backlog", 3, timeout_s=WAIT_S)
        assert len(newest["records"]) == 3 and (newest["records"] == backlog["records"][-3:]
                                                or newest["seq"] > backlog["seq"])
        one_more = record("one more")
        client.call("log", "emit", [one_more], timeout_s=WAIT_S)
        after = client.call("log", "backlog", timeout_s=WAIT_S)
        streamed = read_stream(sub, epoch, backlog["seq"], after["seq"])
        assert one_more in streamed and after["records"][-len(streamed):] == streamed
        assert len(after["records"]) == BACKLOG_SIZE


MALFORMED: list[Any] = [
    "not a record", None, 42, [], {}, record("x", level="INFO"), record("x", level=None),
    record("x", time="now"), record("x", time=math.nan), record("x", time=math.inf),
    record("x", time=-math.inf), record("x", time=1e300), record("x", time=-5.0),
    record("x", source=None), record("x", name=b"bytes"), record("x", message=["list"]),
    {k: v for k, v in record("x").items() if k != "time"},
]


def test_malformed_records(shared_master: Master, tmp_path: Path) -> None:
    """Bad records are dropped one by one; the good ones around them are numbered on."""
    with zmq.Context() as ctx, subscribe_log(ctx, shared_master) as sub, \
            Client(shared_master.address, context=ctx) as client:
        start = client.call("log", "backlog", timeout_s=WAIT_S)
        for body in ("not a list", {"a": 1}, None):
            with pytest.raises(TypeError, match="list of records"):
                client.call("log", "emit", body, timeout_s=WAIT_S)
        valid = [record("valid-1"), record("valid-2", extra="dropped")]
        client.call("log", "emit", [*MALFORMED[:8], valid[0], *MALFORMED[8:]],
                    timeout_s=WAIT_S)
        client.call("log", "emit", MALFORMED, timeout_s=WAIT_S)
        client.call("log", "emit", valid[1:], timeout_s=WAIT_S)
        after = client.call("log", "backlog", timeout_s=WAIT_S)
        streamed = read_stream(sub, start["epoch"], start["seq"], after["seq"])
        assert after["records"][-len(streamed):] == streamed
        del valid[1]["extra"]
        assert [r for r in streamed if r["source"] == "test"] == valid, streamed
        client.send("log", "emit", "one-way: nobody to tell, so the log node logs it")
        shared_master.wait_for_line(r"^ERROR:master:.*one-way message failed: TypeError")
        client.call("log", "emit", [record("valid-3")], timeout_s=WAIT_S)
    shared_master.wait_for_line(r"^INFO:test:test:valid-3$")  # the console takes them too
    follower = show_log(shared_master, tmp_path)  # a late joiner reads the backlog
    try:
        follower.wait_for_line(r"^INFO\s+test\s+\d\d/\d\d \S+ valid-3$")
        stop_follower(follower)
    finally:
        follower.stop()
    shown = [line.split()[-1] for line in follower.output().splitlines() if " valid-" in line]
    assert shown == ["valid-1", "valid-2", "valid-3"], follower.output()


def test_standalone_log_node(master: Master, tmp_path: Path) -> None:
    node = Process([sys.executable, "-m", "artiq_bus.frontend.artiq_node", "log", "-v",
                    "--broker", f"tcp://127.0.0.1:{master.control}"], tmp_path)
    try:
        # The node's own records are its own, on its console and over the bus.
        node.wait_for_line(r"^INFO:node\(log\):[\w.]+:node log: running")
        # The broker tells the master's log node it was replaced (on the new node's console,
        # which now takes every record); the master's log node stops serving.
        node.wait_for_line(r"^WARNING:master:artiq_bus\.broker\.broker:broker: service 'log' "
                           r"registered again by a new peer")
        node.wait_for_line(r"^WARNING:master:artiq_bus\.runtime\.service:service log: "
                           r"another peer took this service over")
        log_from_worker(master, "--count", "3", "--prefix", "to-node-")
        for i in range(3):
            node.wait_for_line(rf"^INFO:{SOURCE_RE}:helper:to-node-{i}$")
        with Client(master.address) as client:  # still the node's, heartbeats later
            assert client.call("log", "backlog", timeout_s=WAIT_S)["records"][-1][
                "message"] == "to-node-2"
        node.signal(signal.SIGTERM)
        assert node.wait() == 0, node.output()
    finally:
        node.stop()
    assert "Traceback" not in node.output(), node.output()
    assert not re.search(r"^\w+:master:[\w.]+:node log:", node.output(), re.M), node.output()
    assert "to-node-" not in master.output()
    both = node.output() + master.output()  # the service never went back and forth
    assert both.count("registered again by a new peer") == 1, both


def test_failing_one_way_messages_do_not_flood_the_log(shared_master: Master) -> None:
    """A sender with a bug: 500 malformed one-way emits give an ERROR line a second at
    most, and the next report counts the ones in between."""
    with Client(shared_master.address) as client:
        for _ in range(500):
            client.send("log", "emit", "not a list")
        client.call("log", "ping", timeout_s=WAIT_S)  # after the 500 in the log's queue
        time.sleep(1.1)  # the report interval is the behaviour under test
        client.send("log", "emit", "still not a list")
        line = shared_master.wait_for_line(r"one-way message failed: .*more since the last")
    found = re.search(r"\((\d+) more since the last report\)", line)
    assert found is not None and int(found[1]) > 0, line
    # one line a second at most (the 500 take well under a second unless the machine
    # is very busy); other tests of this module add one line of their own
    lines = [line for line in shared_master.lines if "emit takes a list" in line]
    assert len(lines) <= 5, lines
