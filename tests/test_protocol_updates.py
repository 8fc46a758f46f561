"""apply_update() and top_key(): every action, numpy targets, errors, a randomized model."""

import copy
import random

import numpy as np
import pytest

from artiq_bus.protocol import ProtocolError, UpdateAction, apply_update, pack, unpack, top_key
from artiq_bus.protocol import updates as U


def wire(update):
    """The update as a receiver sees it."""
    return unpack(*pack(update))


@pytest.fixture(params=["local", "wire"])
def via(request):
    return wire if request.param == "wire" else (lambda update: update)


def test_constructors_build_the_documented_maps():
    assert U.init({"a": 1}) == {"action": "init", "struct": {"a": 1}}
    assert U.setitem(["p"], "k", 2) == {"action": "setitem", "path": ["p"], "key": "k",
                                        "value": 2}
    assert U.delitem([], "k") == {"action": "delitem", "path": [], "key": "k"}
    assert U.append([0], 5) == {"action": "append", "path": [0], "x": 5}
    assert U.insert([1], 2, 5) == {"action": "insert", "path": [1], "i": 2, "x": 5}
    assert U.pop(["q"], -1) == {"action": "pop", "path": ["q"], "i": -1}
    assert U.setitems(["p"], [0, 1], [5, 6]) == {"action": "setitems", "path": ["p"],
                                                 "keys": [0, 1], "values": [5, 6]}
    for update in (U.init({}), U.setitem([], 1, 2), U.pop([], 0), U.setitems([], [], [])):
        assert type(update["action"]) is str
    assert {a.value for a in UpdateAction} == {"init", "setitem", "setitems", "delitem",
                                               "append", "insert", "pop"}


def test_init_replaces_everything(via):
    target = {"old": 1}
    new = apply_update(target, via(U.init({"new": [1, 2], 3: (4,)})))
    assert new == {"new": [1, 2], 3: (4,)}
    assert target == {"old": 1}


@pytest.mark.parametrize("path, key, value, expected", [
    ([], "a", 5, {"a": 5, "d": {"x": [0, 1, {"y": 2}]}, 7: "seven"}),
    ([], 7, None, {"a": 1, "d": {"x": [0, 1, {"y": 2}]}, 7: None}),
    ([], (1, "t"), 2.5, {"a": 1, "d": {"x": [0, 1, {"y": 2}]}, 7: "seven", (1, "t"): 2.5}),
    (["d"], "new", [], {"a": 1, "d": {"x": [0, 1, {"y": 2}], "new": []}, 7: "seven"}),
    (["d", "x"], 0, "z", {"a": 1, "d": {"x": ["z", 1, {"y": 2}]}, 7: "seven"}),
    (["d", "x"], -1, 9, {"a": 1, "d": {"x": [0, 1, 9]}, 7: "seven"}),
    (["d", "x", 2], "y", {"deep": True}, {"a": 1, "d": {"x": [0, 1, {"y": {"deep": True}}]},
                                          7: "seven"}),
])
def test_setitem(via, path, key, value, expected):
    target = {"a": 1, "d": {"x": [0, 1, {"y": 2}]}, 7: "seven"}
    assert apply_update(target, via(U.setitem(path, key, value))) is target
    assert target == expected


@pytest.mark.parametrize("path, key, expected", [
    ([], "a", {"d": {"x": [0, 1, {"y": 2}]}, 7: "seven"}),
    ([], 7, {"a": 1, "d": {"x": [0, 1, {"y": 2}]}}),
    (["d"], "x", {"a": 1, "d": {}, 7: "seven"}),
    (["d", "x"], 1, {"a": 1, "d": {"x": [0, {"y": 2}]}, 7: "seven"}),
    (["d", "x"], -1, {"a": 1, "d": {"x": [0, 1]}, 7: "seven"}),
    (["d", "x", 2], "y", {"a": 1, "d": {"x": [0, 1, {}]}, 7: "seven"}),
])
def test_delitem(via, path, key, expected):
    target = {"a": 1, "d": {"x": [0, 1, {"y": 2}]}, 7: "seven"}
    assert apply_update(target, via(U.delitem(path, key))) is target
    assert target == expected


@pytest.mark.parametrize("update, expected", [
    (U.append(["l"], 9), [0, 1, 2, 9]),
    (U.append(["l"], [1, (2,)]), [0, 1, 2, [1, (2,)]]),
    (U.insert(["l"], 0, "a"), ["a", 0, 1, 2]),
    (U.insert(["l"], 2, "a"), [0, 1, "a", 2]),
    (U.insert(["l"], 3, "a"), [0, 1, 2, "a"]),
    (U.insert(["l"], -1, "a"), [0, 1, "a", 2]),
    (U.pop(["l"], 0), [1, 2]),
    (U.pop(["l"], -1), [0, 1]),
    (U.pop(["l"], 1), [0, 2]),
])
def test_list_actions_at_nested_paths(via, update, expected):
    target = {"l": [0, 1, 2], "n": {"m": [{"l": [0, 1, 2]}]}}
    assert apply_update(target, via(update)) is target
    assert target["l"] == expected
    deep = dict(update, path=["n", "m", 0, "l"])
    apply_update(target, via(deep))
    assert target == {"l": expected, "n": {"m": [{"l": expected}]}}


def test_list_actions_on_a_root_that_is_a_list():
    target = [1]  # apply_update works on whatever container it is given
    apply_update(target, U.append([], 2))
    apply_update(target, U.insert([], 0, 0))
    apply_update(target, U.pop([], 1))
    assert target == [0, 2]


def test_enum_actions_and_wire_enum_actions(via):
    target = {}
    update = {"action": UpdateAction.SETITEM, "path": [], "key": "k", "value": 1}
    apply_update(target, via(update))
    assert target == {"k": 1}
    apply_update(target, via({"action": UpdateAction.DELITEM, "path": [], "key": "k"}))
    assert target == {}


@pytest.mark.parametrize("key, value, expected", [
    (2, 1.5, [0, 1, 1.5, 3, 4, 5]),
    (-1, 7, [0, 1, 2, 3, 4, 7]),
    (slice(1, 3), [8, 9], [0, 8, 9, 3, 4, 5]),
    (slice(None, None, 2), -1, [-1, 1, -1, 3, -1, 5]),
    (slice(None, None, -1), np.arange(6.0), [5, 4, 3, 2, 1, 0]),
])
@pytest.mark.parametrize("read_only", [False, True])
def test_numpy_array_setitem(via, key, value, expected, read_only):
    array = np.arange(6.0)
    array.flags.writeable = not read_only
    target = {"a": array}
    apply_update(target, via(U.setitem(["a"], key, value)))
    assert target["a"].dtype == np.float64
    np.testing.assert_array_equal(target["a"], expected)
    if read_only:  # copied, never written through
        assert target["a"] is not array and target["a"].flags.writeable
        np.testing.assert_array_equal(array, np.arange(6.0))
    else:
        assert target["a"] is array


@pytest.mark.parametrize("read_only", [False, True])
def test_numpy_2d_keys_and_paths_into_arrays(via, read_only):
    array = np.zeros((3, 4), dtype=np.int32)
    array.flags.writeable = not read_only
    target = {"l": [{"a": array}]}
    apply_update(target, via(U.setitem(["l", 0, "a"], (1, 2), 5)))
    apply_update(target, via(U.setitem(["l", 0, "a", 2], slice(0, 2), [6, 7])))
    apply_update(target, via(U.setitem(["l", 0, "a"], (slice(None), 3), 9)))
    expected = np.array([[0, 0, 0, 9], [0, 0, 5, 9], [6, 7, 0, 9]], dtype=np.int32)
    np.testing.assert_array_equal(target["l"][0]["a"], expected, strict=True)
    assert (target["l"][0]["a"] is array) is not read_only
    if read_only:
        assert not array.any()


def test_read_only_array_decoded_in_a_struct_is_updatable():
    body, buffers = pack({"big": np.arange(20_000.0)})
    ro = [memoryview(bytes(b)) for b in buffers]
    struct = unpack(body, ro)
    struct["big"].flags.writeable = False  # as a frame that cannot be written
    apply_update(struct, wire(U.setitem(["big"], slice(0, 2), [-1, -2])))
    assert struct["big"][:3].tolist() == [-1, -2, 2]


ERRORS = {
    "unknown_action": {"action": "frobnicate", "path": [], "key": "a"},
    "no_action": {"path": [], "key": "a", "value": 1},
    "action_list": {"action": ["setitem"], "path": [], "key": "a", "value": 1},
    "no_path": {"action": "setitem", "key": "a", "value": 1},
    "no_key": {"action": "setitem", "path": [], "value": 1},
    "no_value": {"action": "setitem", "path": [], "key": "a"},
    "no_x": {"action": "append", "path": ["l"]},
    "no_i": {"action": "pop", "path": ["l"]},
    "init_no_struct": {"action": "init"},
    "init_list": U.init([1, 2]),
    "init_none": U.init(None),
    "missing_path": U.setitem(["nope", "x"], "a", 1),
    "path_through_int": U.setitem(["n", "k"], "a", 1),
    "path_index_range": U.setitem(["l", 10], "a", 1),
    "path_none": {"action": "setitem", "path": None, "key": "a", "value": 1},
    "unhashable_key": U.setitem([], ["a"], 1),
    "list_key_str": U.setitem(["l"], "a", 1),
    "list_index_range": U.setitem(["l"], 3, 1),
    "list_index_huge": U.setitem(["l"], 2**64 - 1, 1),
    "delitem_missing": U.delitem([], "nope"),
    "delitem_range": U.delitem(["l"], -4),
    "append_dict": U.append([], 1),
    "insert_dict": U.insert(["d"], 0, 1),
    "insert_str_index": U.insert(["l"], "0", 1),
    "insert_huge_index": U.insert(["l"], 2**64 - 1, 1),
    "pop_empty": U.pop(["e"], 0),
    "pop_range": U.pop(["l"], 3),
    "pop_huge": U.pop(["l"], 2**64 - 1),
    "pop_str": U.pop(["l"], "x"),
    "append_to_int": U.append(["n"], 1),
    "append_to_array": U.append(["arr"], 1),
    "array_out_of_bounds": U.setitem(["arr"], 9, 1),
    "array_bad_shape": U.setitem(["arr"], slice(0, 2), [1, 2, 3]),
    "array_bad_value": U.setitem(["arr"], 0, "x"),
    "array_int8_overflow": U.setitem(["i8"], 0, 300),
    "array_uint8_negative": U.setitem(["u8"], 1, -1),
    "array_int_nan": U.setitem(["i8"], 0, float("nan")),
    "array_str_key": U.setitem(["arr"], "f", 1),
    "array_delitem": U.delitem(["arr"], 0),
    "tuple_setitem": U.setitem(["t"], 0, 1),
}


@pytest.mark.parametrize("update", ERRORS.values(), ids=ERRORS.keys())
def test_bad_updates_raise_protocol_error(update):
    target = {"l": [0, 1, 2], "d": {}, "e": [], "n": 5, "t": (1, 2),
              "arr": np.zeros(4), "i8": np.zeros(2, np.int8), "u8": np.zeros(2, np.uint8)}
    with pytest.raises(ProtocolError):
        apply_update(target, update)
    with pytest.raises(ProtocolError):
        apply_update(target, wire(update))


@pytest.mark.parametrize("update", [None, [], "setitem", 5, b"", ("setitem",)], ids=repr)
def test_non_map_updates_raise_protocol_error(update):
    with pytest.raises(ProtocolError):
        apply_update({}, update)


@pytest.mark.parametrize("update, key", [
    (U.setitem([], "a.b", 1), "a.b"), (U.delitem([], 3), 3),
    (U.setitem([], (1, 2), 0), (1, 2)), (U.setitem(["p", "q"], "k", 1), "p"),
    (U.delitem([7], "k"), 7), (U.append(["l", 0], 1), "l"), (U.insert(["m"], 0, 1), "m"),
    (U.pop(["n"], 0), "n"), ({"action": UpdateAction.SETITEM, "path": [], "key": "e"}, "e"),
])
def test_top_key(update, key):
    assert top_key(update) == key
    assert top_key(wire(update)) == key


@pytest.mark.parametrize("update", [
    U.init({"a": 1}), U.append([], 1), U.insert([], 0, 1), U.pop([], 0), {"path": []}, {},
], ids=lambda u: u.get("action", "none"))
def test_top_key_refuses_root_updates_without_a_key(update):
    with pytest.raises(ProtocolError):
        top_key(update)


# --- randomized model check ---------------------------------------------------------

KEYS = ["a", "b", "c", "d", "e.f", "", 0, 1, -2, (1, "t"), (), b"k"]


def random_value(rng, depth=0):
    r = rng.random()
    if depth < 3 and r < 0.15:
        return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if depth < 3 and r < 0.3:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return rng.choice([None, True, False, rng.randrange(-2**63, 2**63), rng.random() * 1e9,
                       -0.0, "x" * rng.randrange(3) + "\u00e9", b"\x00", (1, ("t",)),
                       complex(1, rng.random()), slice(1, rng.randrange(5))])


def containers(node, path=()):
    if isinstance(node, (dict, list)):
        yield list(path), node
        for key, child in (node.items() if isinstance(node, dict) else enumerate(node)):
            yield from containers(child, path + (key,))


def random_update(rng, struct):
    if rng.random() < 0.001:
        return U.init({"r": random_value(rng), 0: [random_value(rng)]})
    path, node = rng.choice(list(containers(struct)))
    value = random_value(rng)
    count = rng.randrange(5)  # for setitems: repeated keys too (the last one wins)
    if isinstance(node, dict):
        if node and rng.random() < 0.3:
            return U.delitem(path, rng.choice(list(node)))
        if rng.random() < 0.2:
            return U.setitems(path, [rng.choice(KEYS) for _ in range(count)],
                              [random_value(rng) for _ in range(count)])
        return U.setitem(path, rng.choice(KEYS), value)
    n = len(node)
    if n and rng.random() < 0.15:
        return U.setitems(path, [rng.randrange(-n, n) for _ in range(count)],
                          [random_value(rng) for _ in range(count)])
    choices = ["append", "insert"] + (["setitem", "setitem", "delitem", "pop"] if n else [])
    action = rng.choice(choices)
    if action == "append":
        return U.append(path, value)
    if action == "insert":
        return U.insert(path, rng.randrange(-n - 2, n + 3), value)
    i = rng.randrange(-n, n)
    return {"setitem": lambda: U.setitem(path, i, value), "delitem": lambda: U.delitem(path, i),
            "pop": lambda: U.pop(path, i)}[action]()


def apply_directly(struct, update):
    """The reference model: plain Python on the plain structure."""
    action = update["action"]
    if action == "init":
        return copy.deepcopy(update["struct"])
    node = struct
    for index in update["path"]:
        node = node[index]
    value = copy.deepcopy(update.get("value", update.get("x")))
    if action == "setitems":
        for key, item in zip(update["keys"], update["values"]):
            node[key] = copy.deepcopy(item)
    elif action == "setitem":
        node[update["key"]] = value
    elif action == "delitem":
        del node[update["key"]]
    elif action == "append":
        node.append(value)
    elif action == "insert":
        node.insert(update["i"], value)
    else:
        node.pop(update["i"])
    return struct


def strict_equal(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k) is type(j) and strict_equal(a[k], b[j])
                                          for k, j in zip(a, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b and str(a) == str(b)  # -0.0
    return a == b


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_update_sequences_match_a_reference_model(seed):
    rng = random.Random(seed)
    initial = {"root": [], "cfg": {"x": 1, 2: [3, {"y": []}]}, "log": ["a"]}
    target, reference = copy.deepcopy(initial), copy.deepcopy(initial)
    actions = set()
    for step in range(3000):
        update = random_update(rng, reference)
        received = wire(update)
        assert received == update
        if update.get("path"):
            assert top_key(received) == update["path"][0]
        reference = apply_directly(reference, update)
        result = apply_update(target, received)
        if update["action"] != "init":
            assert result is target
        target = result
        actions.add(update["action"])
        assert target == reference, step
        if step % 100 == 0:
            assert strict_equal(target, reference), step
    assert strict_equal(target, reference)
    assert actions == {a.value for a in UpdateAction}
