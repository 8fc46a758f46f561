"""Follow a master's log with nothing but pyzmq and msgpack (see docs/protocol.md).

    python follow_log.py [HOST [CONTROL_PORT]]
"""
import secrets
import sys

import msgpack
import zmq

host = sys.argv[1] if len(sys.argv) > 1 else "::1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 3251
host = f"[{host}]" if ":" in host else host
ctx = zmq.Context()


def call(sock, service, method, *args):
    """One request through the broker; returns the result or raises with its error."""
    sock.send_multipart([b"ABUS1", b"REQ", secrets.token_bytes(8), service.encode(),
                         method.encode(), (3000).to_bytes(4, "big"),
                         msgpack.packb([list(args), {}])])
    if not sock.poll(3000):
        sys.exit(f"no master answered at {host}:{port}")
    _, _, _, status, body, *_ = sock.recv_multipart()
    result = msgpack.unpackb(body, strict_map_key=False)
    if status != b"\x00":
        sys.exit(f"{result['type']}: {result['message']}")
    return result


control = ctx.socket(zmq.DEALER)
control.ipv6 = True
control.connect(f"tcp://{host}:{port}")
ports = call(control, "broker", "info")

sub = ctx.socket(zmq.SUB)
sub.ipv6 = True
sub.connect(f"tcp://{host}:{ports['notify']}")
sub.subscribe(b"stream\0log\0")
probe = b"sync\0" + secrets.token_hex(8).encode()
sub.subscribe(probe)                       # answered once our subscriptions are active
while sub.recv_multipart()[0] != probe:
    pass
sub.unsubscribe(probe)

show = lambda r: print(f"{r['level']:>2} {r['source']} {r['name']}: {r['message']}", flush=True)
backlog = call(control, "log", "backlog")
for record in backlog["records"]:
    show(record)
last = backlog["seq"]
while True:
    topic, version, body, *_ = sub.recv_multipart()
    _epoch, first, items = msgpack.unpackb(body, strict_map_key=False)
    for seq, record in enumerate(items, first):
        if seq > last:
            show(record)
            last = seq
