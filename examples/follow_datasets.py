"""Follow a master's datasets with nothing but pyzmq and msgpack (docs/protocol.md §6).

    python follow_datasets.py [HOST [CONTROL_PORT [FILTER]]]

FILTER: "" for every dataset, a dotted folder such as "scan." or one dataset's name.
Prints "NAME = (persist, value, metadata)" for each dataset and each change of one.
"""
import secrets
import sys

import msgpack
import zmq

host, port, key_filter = (sys.argv[1:] + ["::1", "3251", ""][len(sys.argv) - 1:])[:3]
host = f"[{host}]" if ":" in host else host
level = key_filter.count(".") + (not key_filter.endswith(".")) if key_filter else 0


def ext(code, data):  # extension types (protocol §2): arrays are only described here
    value = msgpack.unpackb(data, ext_hook=ext, strict_map_key=False)
    if code == 1:
        return f"<array {value[0]} {value[1]}>"
    return tuple(value) if code == 3 else complex(*value) if code == 4 else msgpack.ExtType(code, data)


def decode(body):
    return msgpack.unpackb(body, ext_hook=ext, strict_map_key=False)


def call(method, *args):
    control.send_multipart([b"ABUS1", b"REQ", secrets.token_bytes(8), b"datasets" if args else b"broker",
                            method.encode(), (3000).to_bytes(4, "big"), msgpack.packb([list(args), {}])])
    if not control.poll(3000):
        sys.exit(f"no master answered at {host}:{port}")
    _, _, _, status, body, *_ = control.recv_multipart()
    if status != b"\x00":
        sys.exit(f"error: {decode(body)['message']}")
    return decode(body)


def apply(struct, update):  # the update vocabulary of docs/protocol.md §6.2
    container = struct
    for index in update["path"]:
        container = container[index]
    action = update["action"]
    if action == "setitem":
        container[update["key"]] = update["value"]
    elif action == "setitems":  # a run of setitem on one container, in order
        for key, value in zip(update["keys"], update["values"]):
            container[key] = value
    elif action == "delitem":
        del container[update["key"]]
    elif action == "append":
        container.append(update["x"])
    elif action == "insert":
        container.insert(update["i"], update["x"])
    else:
        container.pop(update["i"])
    return update["path"][0] if update["path"] else update["key"]


def show(struct, name):
    print(f"{name} = {struct[name]!r}" if name in struct else f"{name} deleted", flush=True)


control = zmq.Context().socket(zmq.DEALER)
control.ipv6 = True
control.connect(f"tcp://{host}:{port}")
sub = zmq.Context.instance().socket(zmq.SUB)
sub.ipv6 = True
sub.connect(f"tcp://{host}:{call('info')['notify']}")
sub.subscribe(b"struct\0datasets\0" + key_filter.encode() + (b"\0" if level and not key_filter.endswith(".") else b""))
sub.subscribe(b"control\0datasets\0")
probe = b"sync\0" + secrets.token_hex(8).encode()
sub.subscribe(probe)  # answered once our subscriptions are active
while sub.recv_multipart()[0] != probe:
    pass
sub.unsubscribe(probe)

while True:  # take a snapshot, then apply the updates that follow it; resync on a gap
    snapshot = call("snapshot", "datasets", key_filter)
    struct, epoch, version, seq = snapshot["struct"], snapshot["epoch"], snapshot["version"], snapshot["seq"]
    for name in sorted(struct):
        show(struct, name)
    while True:
        topic, _, body, *_ = sub.recv_multipart()
        message = decode(body)
        if topic.startswith(b"control"):
            if message[0] != epoch or (level == 0 and message[1] > version):
                break  # a new master, or updates lost at the tail
            continue
        m_epoch, first, prevs, updates = message
        if m_epoch == epoch and first + len(updates) - 1 <= seq:
            continue  # already in the snapshot
        if m_epoch != epoch or prevs[level] != version:
            break  # an update was lost
        try:
            names = [apply(struct, update) for update in updates]
        except (TypeError, KeyError, IndexError):
            break  # e.g. an element of an array changed: take a new snapshot
        for name in dict.fromkeys(names):
            show(struct, name)
        version = first + len(updates) - 1 if level == 0 or key_filter.endswith(".") or key_filter in struct else 0
