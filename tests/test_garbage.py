"""A running master survives garbage at every socket it listens on.

Barrages of random and malformed messages (from a seeded RNG) go to the control port
(DEALER, ROUTER and REQ peers), the publish port (PUB peers), the notify port (SUB and
XSUB peers), and raw non-ZMTP bytes to all three.  After each barrage the master is
alive, its memory has not grown much, and a well-behaved client gets correct answers.
Every barrage that can be synchronised ends with a probe on the same connection (a
``broker.ping`` or a subscription probe), so "after" means after the broker took it all.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import time
from collections.abc import Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

from artiq_bus.client.sync import Client
from artiq_bus.protocol import VERSION, Command, Status, encode_timeout, pack

from conftest import Master
from helpers import zmtp

SEED = 20240611
RSS_GROWTH_LIMIT_KB = 100 * 1024
WAIT_S = 10.0
REQ, REP, MSG, REG = (Command.REQUEST.value, Command.REPLY.value, Command.MESSAGE.value,
                      Command.REGISTER.value)
HB, BYE, ACK = Command.HEARTBEAT.value, Command.BYE.value, Command.ACK.value
TIMEOUT = encode_timeout(5.0)
ARGS, _ = pack([[], {}])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.findall(r"^VmRSS:\s+(\d+) kB$", status.read(), re.M)[0])


def check_healthy(master: Master, client: Client, baseline_kb: int, after: str) -> None:
    assert master.popen.poll() is None, f"master died after {after}:\n{master.output()}"
    assert client.call("broker", "ping", timeout_s=WAIT_S) is True, after
    assert client.call("master", "get_name", timeout_s=WAIT_S) is None, after
    backlog = client.call("log", "backlog", 5, timeout_s=WAIT_S)
    assert isinstance(backlog["seq"], int) and isinstance(backlog["epoch"], int), after
    assert isinstance(backlog["records"], list) and len(backlog["records"]) <= 5, after
    grown = rss_kb(master.popen.pid) - baseline_kb
    assert grown < RSS_GROWTH_LIMIT_KB, f"master RSS grew by {grown} kB after {after}"


def malformed_control_messages(rng: random.Random) -> Iterator[list[bytes]]:
    """Messages (as a DEALER sends them) that the broker must drop or refuse."""
    rid = b"\x00\x00\x00\x00\x00\x00\x00\x01"
    yield from (
        # wrong or missing version frame
        [b"ABUS0", REQ, rid, b"broker", b"ping", TIMEOUT, ARGS], [b"", REQ], [b"abus1", HB],
        [VERSION], [b"\xff" * 300, REQ, rid, b"broker", b"ping", TIMEOUT, ARGS],
        # unknown commands, and commands only the broker sends
        [VERSION, b"XYZ"], [VERSION, b""], [VERSION, b"req", rid], [VERSION, ACK, b"log"],
        [VERSION, b"REQ\x00", rid, b"broker", b"ping", TIMEOUT, ARGS],
        # missing frames
        [VERSION, REQ], [VERSION, REQ, rid], [VERSION, REQ, rid, b"broker", b"ping", TIMEOUT],
        [VERSION, MSG], [VERSION, MSG, b"log"], [VERSION, MSG, b"log", b"emit"],
        [VERSION, REG], [VERSION, REG, b"svc"], [VERSION, REP], [VERSION, REP, b"x", rid, b"\0"],
        # bad UTF-8 and empty or overlong names and ids
        [VERSION, REQ, rid, b"\xff\xfe", b"ping", TIMEOUT, ARGS],
        [VERSION, REQ, rid, b"broker", b"\xc3\x28", TIMEOUT, ARGS],
        [VERSION, MSG, b"lo\xe9", b"emit", ARGS], [VERSION, REG, b"\xed\xa0\x80", ARGS],
        [VERSION, REQ, rid, b"", b"ping", TIMEOUT, ARGS],
        [VERSION, REQ, rid, b"broker", b"", TIMEOUT, ARGS],
        [VERSION, REQ, rid, b"s" * 129, b"ping", TIMEOUT, ARGS],
        [VERSION, REQ, rid, b"broker", b"m" * 5000, TIMEOUT, ARGS],
        [VERSION, REQ, b"", b"broker", b"ping", TIMEOUT, ARGS],
        [VERSION, REQ, b"i" * 65, b"broker", b"ping", TIMEOUT, ARGS],
        # bad timeout frames
        *([VERSION, REQ, rid, b"broker", b"ping", t, ARGS]
          for t in (b"", b"\x00", b"\x00\x00\x00", b"\x00" * 5, b"\xff" * 64)),
        # REG with a bad body, or for the reserved name
        *([VERSION, REG, b"garbage-svc", body] for body in (
            b"", b"\xc1", b"\x92", rng.randbytes(40), pack(None)[0], pack([1, 2])[0],
            pack({"methods": []})[0], pack({"methods": [1]})[0], pack({"methods": "x"})[0],
            pack({"methods": [""]})[0], pack({"nope": ["a"]})[0], b"\xdd\xff\xff\xff\xff",
            b"\x91" * 5000)),
        [VERSION, REG, b"broker", pack({"methods": ["ping"]})[0]],
        [VERSION, REG, b"garbage-svc", pack({"methods": ["a"]})[0], b"extra"],
        # REP and MSG from peers that serve nothing
        [VERSION, REP, b"\x00\x01\x02\x03\x04", rid, Status.OK.value, ARGS],
        [VERSION, REP, rng.randbytes(300), rng.randbytes(80), b"\x07", b"", b"more"],
        [VERSION, MSG, b"no-such-service", b"emit", ARGS],
        [VERSION, MSG, b"log", b"no_such_method", ARGS], [VERSION, MSG, b"broker", b"ping", ARGS],
        [VERSION, BYE, b"extra"],
    )


def answered_garbage(rng: random.Random) -> list[bytes]:
    """A well-framed request with bad arguments or target: it gets an error reply."""
    service, method = rng.choice([(b"log", b"backlog"), (b"log", b"emit"),
                                  (b"master", b"get_name"), (b"broker", b"nope"),
                                  (b"log", b"nope"), (b"nobody", b"ping")])
    body = rng.choice([rng.randbytes(rng.randrange(0, 64)), b"\xc1", pack([1, 2, 3])[0],
                       pack([["a"], {"x": 1}])[0], pack([[], {1: 2}])[0],
                       b"\xc7\x05\x01" + rng.randbytes(5)])
    return [VERSION, REQ, rng.randbytes(8), service, method, TIMEOUT, body]


def random_message(rng: random.Random) -> list[bytes]:
    """Random frames; often behind a real version frame and command to get further in."""
    frames = [rng.randbytes(rng.randrange(0, 48)) for _ in range(rng.randrange(0, 9))]
    head = rng.random()
    if head < 0.4:
        frames = [VERSION, rng.choice([REQ, REP, MSG, REG, HB, BYE, ACK]), *frames]
    elif head < 0.6:
        frames = [VERSION, *frames]
    if rng.random() < 0.05 and frames:
        frames[rng.randrange(len(frames))] = rng.randbytes(rng.randrange(1000, 70_000))
    if frames[:2] == [VERSION, REG]:
        frames = frames[:3] + [b"\xc1"]  # never a valid registration
    return frames or [b""]


def garbage_batch(rng: random.Random, n: int) -> list[list[bytes]]:
    messages = list(malformed_control_messages(rng))
    while len(messages) < n:
        messages.append(answered_garbage(rng) if rng.random() < 0.1 else random_message(rng))
    rng.shuffle(messages)
    return messages


def make(ctx: zmq.Context, kind: int, **options: object) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.ipv6 = True
    sock.sndtimeo = sock.rcvtimeo = int(WAIT_S * 1000)
    for name, value in options.items():
        setattr(sock, name, value)
    return sock


def huge_messages(rng: random.Random) -> list[list[bytes]]:
    return [[VERSION, MSG, b"log", b"emit", rng.randbytes(16 << 20)],
            [rng.randbytes(8 << 20), REQ]] * 3


def control_barrage(ctx: zmq.Context, kind: int, endpoint: str,
                    messages: list[list[bytes]], rng: random.Random) -> int:
    """``messages`` from a DEALER or a ROUTER peer (which names the broker with
    CONNECT_ROUTING_ID), then a ping on the same connection and its reply."""
    router = kind == zmq.ROUTER
    head = [b"broker"] if router else []
    options = ({"router_mandatory": True, "routing_id": b"garbage-router-" + rng.randbytes(4)}
               if router else {})
    with make(ctx, kind, rcvhwm=0, **options) as sock:
        if router:
            sock.setsockopt(zmq.CONNECT_ROUTING_ID, b"broker")
        sock.connect(endpoint)
        deadline = time.monotonic() + WAIT_S
        while True:  # a ROUTER refuses to send until the connection is up
            try:
                sock.send_multipart([*head, VERSION, b"XYZ"])
                break
            except zmq.ZMQError as exc:
                assert exc.errno == zmq.EHOSTUNREACH and time.monotonic() < deadline
                sock.poll(10)
        for frames in messages:
            sock.send_multipart([*head, *frames])
        sync_id = b"sync" + rng.randbytes(4)
        sock.send_multipart([*head, VERSION, REQ, sync_id, b"broker", b"ping", TIMEOUT, ARGS])
        while (reply := sock.recv_multipart()[len(head):])[:3] != [VERSION, REP, sync_id]:
            pass  # error replies to the answerable garbage, BYE for HB
        assert reply[3] == Status.OK.value
        return len(messages) + 2


def req_barrage(ctx: zmq.Context, endpoint: str, rng: random.Random, n: int) -> int:
    """REQ peers put an empty delimiter first: nothing they send is well-formed.  (No
    reply to wait for: closing waits, up to its linger, until everything is sent.)"""
    with make(ctx, zmq.REQ, req_relaxed=True, linger=int(WAIT_S * 1000)) as sock:
        sock.connect(endpoint)
        messages = garbage_batch(rng, n)
        for frames in messages:
            sock.send_multipart(frames)
        return len(messages)


def sync_subscriptions(sock: zmq.Socket, rng: random.Random, raw: bool) -> None:
    """Wait until the broker has taken every subscription ``sock`` sent before."""
    token = rng.randbytes(8).hex().encode()
    if raw:
        sock.send(b"\x01sync\x00" + token)
    else:
        sock.subscribe(b"sync\x00" + token)
    try:
        while sock.recv_multipart()[0] != b"sync\x00" + token:
            pass  # publications some garbage subscription matched
    except zmq.Again:
        raise AssertionError("the broker never answered the subscription probe") from None


def notify_barrage(ctx: zmq.Context, endpoint: str, rng: random.Random, n: int) -> int:
    """Garbage subscription frames from an XSUB peer and junk topics from a SUB peer."""
    # sndhwm 0: at its high-water mark an XSUB drops, and the probe must get through
    with make(ctx, zmq.XSUB, sndhwm=0) as xsub, make(ctx, zmq.SUB, sndhwm=0) as sub:
        xsub.connect(endpoint)
        sub.connect(endpoint)
        for _ in range(n):
            kind, topic = rng.random(), rng.randbytes(rng.randrange(0, 64))
            if kind < 0.5:  # (un)subscribe
                xsub.send((b"\x01" if kind < 0.3 else b"\x00") + topic)
            elif kind < 0.9:  # anything, in one frame or several
                xsub.send_multipart([topic, *(rng.randbytes(9) for _ in range(rng.randrange(4)))])
            else:
                sub.subscribe(topic)
                if rng.random() < 0.5:
                    sub.unsubscribe(topic)
        for size in (1000, 4000):  # long ones: zmtp_barrage (they would crash us)
            xsub.send(b"\x01" + rng.randbytes(size))
            xsub.send(b"\x00" + rng.randbytes(size))
            sub.subscribe(b"\xfe" + rng.randbytes(size))
        xsub.send(b"\x01")  # subscribe to everything, then never read
        sync_subscriptions(xsub, rng, raw=True)
        sync_subscriptions(sub, rng, raw=False)
    return n


def publish_barrage(ctx: zmq.Context, endpoints: tuple[str, str], rng: random.Random,
                    n: int) -> int:
    """Junk topics and bodies into the publish port, some on topics clients use."""
    publish, notify = endpoints
    marker = b"garbage-marker\x00" + rng.randbytes(4)
    with make(ctx, zmq.PUB, sndhwm=0) as pub, make(ctx, zmq.SUB) as sub:
        sub.subscribe(marker)
        sub.connect(notify)
        pub.connect(publish)
        deadline = time.monotonic() + WAIT_S
        while not sub.poll(10):  # PUB drops until the broker's subscription arrives
            assert time.monotonic() < deadline, "publications never went through"
            pub.send_multipart([marker, b"hello"])
        real_topics = [b"stream\x00log\x00", b"struct\x00schedule\x00", b"control\x00x\x00",
                       b"sync\x00", b"\x01sync\x00abc", b""]
        for _ in range(n):
            topic = (rng.choice(real_topics) if rng.random() < 0.3
                     else rng.randbytes(rng.randrange(0, 64)))
            pub.send_multipart([topic, *(rng.randbytes(rng.randrange(0, 200))
                                         for _ in range(rng.randrange(0, 5)))])
        pub.send_multipart([b"stream\x00log\x00", VERSION, rng.randbytes(4 << 20)])
        pub.send_multipart([marker, b"last"])
        while sub.recv_multipart() != [marker, b"last"]:
            pass
    return n + 1


def zmtp_barrage(ports: dict[str, int], rng: random.Random) -> tuple[int, int]:
    """Frames no libzmq peer would send, after a correct handshake.  The master hangs up
    by itself on subscriptions too long to keep and on frames over the size limit; it
    ignores reserved flag bits and unknown commands (we hang up then).  Returns the
    connections made, and how many of them to the control port."""
    cases = [
        ("notify", b"XSUB", zmtp.frame(b"\x01" + rng.randbytes(300_000)), True),
        ("notify", b"SUB", zmtp.frame(b"\x00" + rng.randbytes(1 << 20)), True),
        ("notify", b"XSUB", zmtp.frame(b"\x01" + b"\xfe" * 100_000, more=True), True),
        ("notify", b"SUB", b"\x02" + struct.pack(">Q", 1 << 62), True),
        ("publish", b"PUB", b"\x02" + struct.pack(">Q", 1 << 40), True),
        ("publish", b"XPUB", b"\xf8\x05hello", False),
        ("control", b"DEALER", b"\x03" + struct.pack(">Q", (1 << 30) + 1), True),
        ("control", b"REQ", zmtp.frame(b"\x05HELLO" + rng.randbytes(40), command=True), False),
        ("control", b"ROUTER", b"\xff" * 9, True),
    ]
    for port, socket_type, payload, hangs_up in cases:
        for host in ("127.0.0.1", "::1"):
            with zmtp.connect(host, ports[port], socket_type, WAIT_S) as sock:
                if socket_type in (b"DEALER", b"ROUTER"):  # first, a message it accepts
                    sock.sendall(zmtp.frame(VERSION, more=True) + zmtp.frame(b"XYZ"))
                zmtp.wait_hung_up(sock, payload, shut_write=not hangs_up)
    return 2 * len(cases), 2 * sum(case[0] == "control" for case in cases)


def raw_tcp_barrage(ports: dict[str, int], rng: random.Random) -> tuple[int, int]:
    """Non-ZMTP bytes at every port on both loopback addresses; the master hangs up.
    (Random bytes can pass for ZMTP 1.0, a peer identity and messages: the control
    port may then see malformed messages.)  Returns the connections made, and how many
    of them to the control port."""
    greeting = zmtp.GREETING
    payloads = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00", b"\xff" * 10 + b"\x00" * 100,
                rng.randbytes(65536), greeting + b"\x06" + b"\x7f" + b"\xff" * 7,
                greeting + b"\x04\x05READY" + rng.randbytes(200),  # a READY cut short
                greeting[:12] + b"CURVE".ljust(20, b"\x00") + greeting[32:] + rng.randbytes(300),
                b"\xff" + b"\x00" * 8 + b"\x7f\x01"]
    for port in ports.values():
        for host in ("127.0.0.1", "::1"):
            for payload in payloads:
                with socket.create_connection((host, port), timeout=WAIT_S) as sock:
                    # EOF after the bytes: ZeroMQ would wait for a whole greeting
                    zmtp.wait_hung_up(sock, payload, shut_write=True)
    return 2 * len(ports) * len(payloads), 2 * len(payloads)


def wrong_socket_types(ctx: zmq.Context, ports: dict[str, int]) -> int:
    """Sockets the master's sockets cannot talk to: it hangs up during the handshake."""
    pairs = [(zmq.PUSH, "control"), (zmq.PUB, "control"), (zmq.PAIR, "control"),
             (zmq.DEALER, "notify"), (zmq.PULL, "notify"), (zmq.SUB, "publish"),
             (zmq.ROUTER, "publish")]
    for kind, port in pairs:
        with make(ctx, kind) as sock:
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                              | zmq.EVENT_DISCONNECTED)
            try:
                sock.connect(f"tcp://127.0.0.1:{ports[port]}")
                assert monitor.poll(WAIT_S * 1000), f"no handshake result for {kind!r}"
                event = recv_monitor_message(monitor)["event"]
                assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, f"{kind!r} accepted on {port}"
            finally:
                sock.disable_monitor()
                monitor.close()
    return len(pairs)


def test_garbage_at_every_socket(master: Master) -> None:
    rng = random.Random(SEED)
    ports = {"control": master.control, "notify": master.notify, "publish": master.publish}
    control4, control6 = master.address.control, f"tcp://[::1]:{master.control}"
    ctx = zmq.Context()
    try:
        with Client(master.address, context=ctx) as client:
            check_healthy(master, client, rss_kb(master.popen.pid), "start")  # warm up
            baseline = rss_kb(master.popen.pid)
            malformed_peers = sent = 0
            for round_ in range(3):
                for kind, n in ((zmq.DEALER, 500),) * 4 + ((zmq.ROUTER, 1000),):
                    for endpoint in (control4, control6):
                        sent += control_barrage(ctx, kind, endpoint, garbage_batch(rng, n), rng)
                        malformed_peers += 1
                sent += req_barrage(ctx, control4, rng, 500)
                malformed_peers += 1
                check_healthy(master, client, baseline, f"control barrage {round_}")
            for endpoint in (control4, control6):
                sent += control_barrage(ctx, zmq.DEALER, endpoint, huge_messages(rng), rng)
                malformed_peers += 1
            check_healthy(master, client, baseline, "huge frames")
            for round_ in range(2):
                for host in ("127.0.0.1", "[::1]"):
                    sent += notify_barrage(ctx, f"tcp://{host}:{master.notify}", rng, 2000)
                    sent += publish_barrage(ctx, (f"tcp://{host}:{master.publish}",
                                                  master.address.notify), rng, 2000)
                check_healthy(master, client, baseline, f"publication barrage {round_}")
            for barrage in (raw_tcp_barrage, zmtp_barrage):
                connections, to_control = barrage(ports, rng)
                sent += connections
                malformed_peers += to_control
                check_healthy(master, client, baseline, barrage.__name__)
            sent += wrong_socket_types(ctx, ports)
            check_healthy(master, client, baseline, "wrong socket types")
    finally:
        ctx.destroy(linger=0)
    assert master.stop() == 0, master.output()
    output = master.output()
    assert "Traceback" not in output, output
    dropped = len(re.findall("dropping malformed message", output))
    assert 1 <= dropped <= malformed_peers, (dropped, malformed_peers)
    assert dropped * 100 < sent, (dropped, sent)


def test_probe_after_subscription_burst(master: Master) -> None:
    """A burst of subscriptions (many subscribers starting, or one flooding) while the
    broker is busy must not make it lose the subscription probe behind the burst."""
    rng = random.Random(SEED)
    ping = [VERSION, REQ, b"busy", b"broker", b"ping", TIMEOUT, ARGS]
    with zmq.Context() as ctx, make(ctx, zmq.DEALER, sndhwm=0, rcvhwm=0) as busy:
        busy.connect(master.address.control)
        for _ in range(3):
            with make(ctx, zmq.XSUB, sndhwm=0) as xsub:
                xsub.connect(master.address.notify)
                for _ in range(10_000):
                    busy.send_multipart(ping)
                    xsub.send(b"\x01" + rng.randbytes(16))
                sync_subscriptions(xsub, rng, raw=True)
