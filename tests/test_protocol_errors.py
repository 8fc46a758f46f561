"""Errors across the wire, the request/reply envelope, and publication topics."""

import builtins

import msgpack
import pytest
import zmq

from artiq_bus.protocol import (MAX_NAME_BYTES, MAX_REQUEST_ID_BYTES, VERSION, BusError, Command,
                                DeadlineExceeded, EncodeError, NoSuchMethod, NoSuchService,
                                Overloaded, ProtocolError, RemoteError, ServiceDied, Status,
                                Unauthorized, Unavailable, check_name, control_topic,
                                decode_timeout, encode_timeout, error_from_wire, error_to_wire,
                                filter_level, key_text, levels, msgpack_array_header, pack,
                                register_error, split_command, stream_topic,
                                struct_filter_topic, struct_topic, sync_topic, unpack)
from artiq_bus.protocol import errors as errors_module

BUS_ERRORS = [BusError, ProtocolError, EncodeError, Unavailable, DeadlineExceeded,
              NoSuchService, NoSuchMethod, ServiceDied, Overloaded, Unauthorized]
ALLOWED_BUILTINS = [
    "KeyError", "ValueError", "TypeError", "IndexError", "AttributeError",
    "NotImplementedError", "RuntimeError", "FileNotFoundError", "FileExistsError",
    "PermissionError", "IsADirectoryError", "NotADirectoryError", "OSError",
    "TimeoutError", "LookupError", "ArithmeticError", "ZeroDivisionError",
    "OverflowError", "UnicodeError", "AssertionError"]


def raised(exc):
    """``exc`` with a traceback, as a service's method would have raised it."""
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001
        return caught


def across(exc, with_traceback=True):
    """What the caller gets: to wire, through the codec, back to an exception."""
    body = error_to_wire(exc, with_traceback)
    assert set(body) == {"type", "message", "traceback"}
    assert all(type(v) is str for v in body.values())
    return error_from_wire(unpack(*pack(body)))


@pytest.fixture
def registry():
    saved = dict(errors_module._REGISTERED)
    yield
    errors_module._REGISTERED.clear()
    errors_module._REGISTERED.update(saved)


def test_hierarchy():
    for cls in BUS_ERRORS + [RemoteError]:
        assert issubclass(cls, BusError) and issubclass(cls, Exception)
    assert issubclass(EncodeError, TypeError)
    assert not issubclass(ProtocolError, TypeError)


@pytest.mark.parametrize("cls", BUS_ERRORS, ids=lambda c: c.__name__)
def test_bus_errors_map_to_their_class(cls):
    exc = across(raised(cls("went wrong: \u00e9")))
    assert type(exc) is cls
    assert str(exc) == "went wrong: \u00e9"
    assert not isinstance(exc, RemoteError)


@pytest.mark.parametrize("name", ALLOWED_BUILTINS)
def test_allowed_builtins_become_remote_errors_of_that_type(name):
    builtin = getattr(builtins, name)
    exc = across(raised(builtin("the message")))
    assert isinstance(exc, RemoteError) and isinstance(exc, builtin)
    assert type(exc) is not builtin and type(exc).__name__ == f"Remote{name}"
    assert exc.remote_type == name
    assert exc.args[0] == "the message"
    assert str(exc) == f"{name}: the message"
    assert "Traceback" in exc.remote_traceback and name in exc.remote_traceback
    with pytest.raises(builtin):
        raise exc


def test_key_error_is_caught_as_key_error():
    try:
        raise across(raised(KeyError("missing")))
    except KeyError as exc:
        assert isinstance(exc, RemoteError) and isinstance(exc, LookupError)
        assert exc.args[0] == "missing" and exc.remote_type == "KeyError"
    assert error_to_wire(KeyError("missing"))["message"] == "missing"  # not "'missing'"


@pytest.mark.parametrize("exc, remote_type, message", [
    (SystemExit("bye"), "SystemExit", "bye"),
    (KeyboardInterrupt(), "KeyboardInterrupt", ""),
    (StopIteration("s"), "StopIteration", "s"),
    (RecursionError("deep"), "RecursionError", "deep"),
    (type("ApplicationError", (Exception,), {})("app"), "ApplicationError", "app"),
    (ValueError("a", 2), "ValueError", "('a', 2)"),
    (RemoteError("plain"), "RemoteError", "plain"),
])
def test_other_errors_become_plain_remote_errors(exc, remote_type, message):
    out = across(raised(exc))
    if remote_type in ALLOWED_BUILTINS:
        assert isinstance(out, getattr(builtins, remote_type))
    else:
        assert type(out) is RemoteError
        assert not isinstance(out, type(exc)) or type(exc) is RemoteError
    assert out.remote_type == remote_type
    assert out.args[0] == message
    assert str(out) == f"{remote_type}: {message}"


@pytest.mark.parametrize("name", ["__import__", "os.system", "SystemExit", "object", "",
                                  "builtins.KeyError", "RemoteError", "Exception"])
def test_nothing_is_looked_up_by_name(name):
    exc = error_from_wire({"type": name, "message": "m", "traceback": "tb"})
    assert type(exc) is RemoteError
    assert (exc.remote_type, exc.args[0], exc.remote_traceback) == (name, "m", "tb")


def test_remote_errors_forward_unchanged():
    first = across(raised(ZeroDivisionError("zero")))
    second = across(raised(first))
    assert type(second) is type(first)
    assert (second.remote_type, second.args[0]) == ("ZeroDivisionError", "zero")
    third = across(raised(RemoteError("odd", "CustomThing", "tb")))
    assert type(third) is RemoteError and str(third) == "CustomThing: odd"
    assert str(RemoteError("bare")) == "bare"


def test_traceback_is_optional():
    assert error_to_wire(raised(ValueError("v")), with_traceback=False)["traceback"] == ""
    assert error_to_wire(ValueError("never raised"))["traceback"] == ""
    body = error_to_wire(raised(ValueError("v")))
    assert "ValueError: v" in body["traceback"]
    assert across(raised(ValueError("v")), with_traceback=False).remote_traceback == ""


def test_register_error(registry):
    @register_error
    class CalibrationFailed(Exception):
        pass

    assert CalibrationFailed.__name__ == "CalibrationFailed"
    exc = across(raised(CalibrationFailed("drift too large")))
    assert type(exc) is CalibrationFailed and str(exc) == "drift too large"


def test_register_error_odd_constructor_and_bus_names_win(registry):
    class NeedsTwo(Exception):
        def __init__(self, a, b):
            super().__init__(a, b)

    register_error(NeedsTwo)
    exc = error_from_wire({"type": "NeedsTwo", "message": "m", "traceback": ""})
    assert type(exc) is RemoteError and exc.remote_type == "NeedsTwo"
    register_error(type("Unavailable", (Exception,), {}))
    assert type(error_from_wire({"type": "Unavailable", "message": ""})) is Unavailable


@pytest.mark.parametrize("body", [None, [], ["KeyError", "m", ""], "KeyError", b"x", 5, 1.5,
                                  ("ValueError",)], ids=repr)
def test_malformed_error_bodies_give_protocol_error(body):
    exc = error_from_wire(body)
    assert type(exc) is ProtocolError


def test_error_body_fields_are_coerced_to_text():
    exc = error_from_wire({"type": "KeyError", "message": 5, "traceback": None})
    assert isinstance(exc, KeyError) and exc.args[0] == "5"


# --- frames ------------------------------------------------------------------------


def test_constants():
    assert VERSION == b"ABUS1"
    assert (MAX_NAME_BYTES, MAX_REQUEST_ID_BYTES) == (128, 64)
    assert [c.value for c in Command] == [b"REQ", b"REP", b"MSG", b"REG", b"ACK", b"HB", b"BYE"]
    assert (Status.OK, Status.ERROR) == (b"\x00", b"\x01")


@pytest.mark.parametrize("seconds, frame", [
    (1.5, b"\x00\x00\x05\xdc"), (0.001, b"\x00\x00\x00\x01"), (0, b"\x00\x00\x00\x01"),
    (1e-6, b"\x00\x00\x00\x01"), (-3, b"\x00\x00\x00\x01"), (2.9999, b"\x00\x00\x0b\xb7"),
    (4294967.295, b"\xff\xff\xff\xff"), (1e12, b"\xff\xff\xff\xff"),
    (float("inf"), b"\xff\xff\xff\xff"), (float("-inf"), b"\x00\x00\x00\x01"),
])
def test_encode_timeout(seconds, frame):
    assert encode_timeout(seconds) == frame
    assert decode_timeout(frame) == int.from_bytes(frame, "big") / 1000


@pytest.mark.parametrize("seconds", [0.001, 0.25, 1, 30, 86400, 4294967.295])
def test_timeout_roundtrip(seconds):
    assert decode_timeout(encode_timeout(seconds)) == pytest.approx(seconds, abs=1e-9)
    assert decode_timeout(zmq.Frame(encode_timeout(seconds))) == pytest.approx(seconds)


@pytest.mark.parametrize("frame", [b"", b"\x00" * 3, b"\x00" * 5, b"\x00" * 8])
def test_decode_timeout_refuses_wrong_length(frame):
    with pytest.raises(ProtocolError):
        decode_timeout(frame)


@pytest.mark.parametrize("command", list(Command), ids=lambda c: c.name)
def test_split_command(command):
    frames = [VERSION, command.value, b"svc", b"", b"body"]
    got, rest = split_command(frames)
    assert got is command
    assert list(rest) == [b"svc", b"", b"body"]
    got, rest = split_command([zmq.Frame(f) for f in frames[:2]])
    assert got is command and len(rest) == 0


@pytest.mark.parametrize("frames", [
    [], [VERSION], [b"ABUS2", b"REQ"], [b"", b"REQ"], [b"abus1", b"REQ"], [b"REQ", VERSION],
    [VERSION, b"XYZ"], [VERSION, b""], [VERSION, b"req"], [VERSION, b"REQ "], [VERSION, b"\x00"],
    [VERSION + b"\x00", b"HB"],
], ids=repr)
def test_split_command_refuses_bad_frames(frames):
    with pytest.raises(ProtocolError):
        split_command(frames)


@pytest.mark.parametrize("frame, name", [
    (b"svc", "svc"), (b"a" * MAX_NAME_BYTES, "a" * MAX_NAME_BYTES),
    ("\u00e9".encode() * 64, "\u00e9" * 64), (zmq.Frame(b"m.n"), "m.n"),
    (memoryview(b"x"), "x"), (bytearray(b"y"), "y"),
])
def test_check_name_accepts(frame, name):
    assert check_name(frame, "service") == name


@pytest.mark.parametrize("frame", [
    b"", b"a" * (MAX_NAME_BYTES + 1), "\u00e9".encode() * 64 + b"a", b"\xff", b"ab\xc3",
    zmq.Frame(b""), b"\x80abc",
], ids=repr)
def test_check_name_refuses(frame):
    with pytest.raises(ProtocolError, match="method"):
        check_name(frame, "method")


# --- publications ------------------------------------------------------------------


@pytest.mark.parametrize("key, text", [
    ("a.b", b"a.b"), ("\u00e9", "\u00e9".encode()), ("", b""), (5, b"5"), (-3, b"-3"),
    (2**70, str(2**70).encode()),
])
def test_key_text(key, text):
    assert key_text(key) == text
    assert struct_topic("S", key) == b"struct\x00S\x00" + text + b"\x00"


@pytest.mark.parametrize("key", [True, False, 1.5, None, (1,), b"k", "a\x00b"], ids=repr)
def test_bad_root_keys(key):
    with pytest.raises(ProtocolError):
        key_text(key)
    with pytest.raises(ProtocolError):
        struct_topic("S", key)


def test_topics():
    assert struct_filter_topic("S") == struct_filter_topic("S", None) == b"struct\x00S\x00"
    assert struct_filter_topic("S", "scan.") == b"struct\x00S\x00scan."
    assert struct_filter_topic("S", "scan") == b"struct\x00S\x00scan\x00"
    assert struct_filter_topic("S", 7) == b"struct\x00S\x007\x00"
    assert control_topic("S") == b"control\x00S\x00"
    assert stream_topic("log") == b"stream\x00log\x00"
    assert sync_topic(b"\x01tok") == b"sync\x00\x01tok"
    kinds = [struct_filter_topic("S"), control_topic("S"), stream_topic("S"), sync_topic(b"")]
    for a in kinds:
        assert sum(b.startswith(a) for b in kinds) == 1


KEYS = ["a", "ab", "a.b", "a.bc", "a.b.c", "ab.c", "scan", "scan.x", "scanner", 5, 55, -5]
FILTERS = ["", None, "a", "a.", "a.b", "a.b.", "ab.", "scan.", "scan", "sc", 5, 55]


def matches(key, key_filter):
    if key_filter in ("", None):
        return True
    if isinstance(key_filter, str) and key_filter.endswith("."):
        return isinstance(key, str) and key.startswith(key_filter)
    return key == key_filter


@pytest.mark.parametrize("key", KEYS)
def test_prefix_subscription_selects_exactly_the_matching_keys(key):
    topic = struct_topic("S", key)
    for key_filter in FILTERS:
        assert topic.startswith(struct_filter_topic("S", key_filter)) == matches(
            key, key_filter), key_filter
        assert not topic.startswith(struct_filter_topic("T", key_filter))


@pytest.mark.parametrize("key, expected", [
    ("a", ["", "a"]), ("a.b", ["", "a.", "a.b"]), ("a.b.c", ["", "a.", "a.b.", "a.b.c"]),
    ("x..y", ["", "x.", "x..", "x..y"]), (5, ["", 5]), (-1, ["", -1]),
])
def test_levels(key, expected):
    assert levels(key) == expected


@pytest.mark.parametrize("key_filter, level", [
    ("", 0), (None, 0), ("a", 1), ("a.", 1), ("a.b", 2), ("a.b.", 2), ("a.b.c", 3), (7, 1),
])
def test_filter_level(key_filter, level):
    assert filter_level(key_filter) == level


@pytest.mark.parametrize("key", KEYS)
def test_filter_level_points_at_the_filters_own_level(key):
    for key_filter in FILTERS:
        if matches(key, key_filter):
            assert levels(key)[filter_level(key_filter)] == (key_filter or ""), key_filter


@pytest.mark.parametrize("n, header_len", [(0, 1), (1, 1), (15, 1), (16, 3), (65535, 3),
                                           (65536, 5)])
def test_msgpack_array_header(n, header_len):
    header = msgpack_array_header(n)
    assert len(header) == header_len
    values = [(i, "t") if i % 7 == 0 else i * 1000 - 3 for i in range(n)]
    items = b"".join(pack(v)[0] for v in values)
    assert unpack(header + items) == values
    assert msgpack.unpackb(header + msgpack.packb(list(range(n)))[header_len:]) == list(range(n))
    body = msgpack_array_header(3) + pack(4)[0] + pack(9)[0] + header + items  # a stream body
    assert unpack(body) == [4, 9, values]
