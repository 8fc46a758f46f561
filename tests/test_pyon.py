"""PYON v2 encoding/decoding, v1 decoding, and the file helpers (artiq_bus.pyon)."""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from artiq_bus import pyon

EXTENDED = {
    "tuple": (1, "a", (2.5, None)),
    "empty tuple": (),
    "int keys": {1: "one", 2: [1, 2]},
    "tuple keys": {(1, 2): "pair", "s": 3},
    "complex": 1.5 - 2j,
    "bytes": b"\x00\xffabc",
    "empty bytes": b"",
    "set": {1, 2, "three"},
    "slice": slice(1, None, -2),
    "fraction": Fraction(-7, 3),
    "ordered dict": OrderedDict([("b", 1), ("a", 2), (3, (4,))]),
    "nested": [{"x": (1, {2: b"y"})}, {Fraction(1, 2)}],
}
PLAIN = [
    None, True, False, 0, -12, 2**70, 1.25, -0.0, "", "héllo \"quoted\"\n",
    [], {}, [1, [2, [3]]], {"a": {"b": [None, True, 1.5]}}, {"": ""},
]
# dtypes h5py can store (plus complex, datetime and timedelta, which PYON also carries)
ARRAY_DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8",
                "c8", "c16", "S5", "U5", "M8[s]", "m8[ms]", ">i4", ">f8"]


def roundtrip(value: Any, pretty: bool = False) -> Any:
    return pyon.decode(pyon.encode(value, pretty))


def assert_same_array(decoded: Any, original: np.ndarray) -> None:
    assert isinstance(decoded, np.ndarray)
    assert decoded.dtype == original.dtype
    assert decoded.shape == original.shape
    np.testing.assert_array_equal(decoded, original)


@pytest.mark.parametrize("pretty", [False, True])
@pytest.mark.parametrize("name", sorted(EXTENDED))
def test_extended_types_round_trip(name: str, pretty: bool) -> None:
    value = EXTENDED[name]
    decoded = roundtrip(value, pretty)
    assert decoded == value
    assert type(decoded) is type(value)


def test_ordered_dict_keeps_order_and_type() -> None:
    value = OrderedDict([("z", 1), ("a", 2)])
    decoded = roundtrip(value)
    assert isinstance(decoded, OrderedDict) and list(decoded) == ["z", "a"]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_json_encodes_exactly_like_json(value: Any) -> None:
    assert pyon.encode(value) == json.dumps(value, separators=(",", ":"))
    assert pyon.encode(value, pretty=True) == json.dumps(value, indent=4)
    assert json.loads(pyon.encode(value)) == value
    assert roundtrip(value) == value


def test_compact_output_is_one_line() -> None:
    text = pyon.encode({"a": [1, 2], "b": {1: (np.zeros(3), "x\ny")}})
    assert "\n" not in text and " " not in text


def test_reference_examples() -> None:
    assert pyon.encode((False, np.array([1.0, 2.0]), {})) == (
        '{"__jsonclass__":["tuple",[[false,{"__jsonclass__":["nparray",'
        '[[2],"<f8","AAAAAAAA8D8AAAAAAAAAQA=="]]},{}]]]}')
    assert pyon.encode({"action": "init", "struct": {1: {}}}) == (
        '{"action":"init","struct":{"__jsonclass__":["dict",[[[1,{}]]]]}}')


def test_nan_and_infinities_use_json_literals() -> None:
    text = pyon.encode([math.nan, math.inf, -math.inf])
    assert text == "[NaN,Infinity,-Infinity]"
    decoded = pyon.decode(text)
    assert math.isnan(decoded[0]) and decoded[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize("dtype", ARRAY_DTYPES)
def test_arrays_of_every_storable_dtype(dtype: str) -> None:
    if dtype[0] in "SU":
        array = np.array([["ab", "c"], ["", "defgh"]], dtype=dtype)
    elif dtype == "?":
        array = np.array([[True, False], [False, True]])
    else:
        array = np.arange(4).reshape(2, 2).astype(dtype)
    assert_same_array(roundtrip(array), array)


def test_float_array_with_nan() -> None:
    decoded = roundtrip(np.array([1.0, np.nan, np.inf]))
    assert decoded[0] == 1.0 and np.isnan(decoded[1]) and decoded[2] == np.inf


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0, 2)])
def test_empty_arrays(shape: tuple[int, ...]) -> None:
    array = np.zeros(shape, dtype="<i2")
    assert_same_array(roundtrip(array), array)


def test_fortran_order_and_strided_arrays_keep_their_values() -> None:
    fortran = np.asfortranarray(np.arange(12, dtype=float).reshape(3, 4))
    assert_same_array(roundtrip(fortran), fortran)
    strided = np.arange(20)[::3]
    assert_same_array(roundtrip(strided), strided)


def test_zero_dimensional_and_structured_arrays() -> None:
    scalar_array = np.array(3.5)
    assert_same_array(roundtrip(scalar_array), scalar_array)
    structured = np.array([(1, 2.5), (3, -1.0)], dtype=[("a", "<i4"), ("b", "<f8")])
    decoded = roundtrip(structured)
    assert decoded.dtype == structured.dtype
    assert decoded["b"].tolist() == [2.5, -1.0]


def test_decoded_arrays_are_writable() -> None:
    decoded = roundtrip(np.zeros(3))
    decoded[0] = 1.0
    assert decoded.tolist() == [1.0, 0.0, 0.0]


NP_SCALARS = [np.bool_(True), np.int8(-3), np.int16(-300), np.int32(7), np.int64(-2**40),
              np.uint8(200), np.uint16(60000), np.uint32(4000000000), np.uint64(2**63),
              np.float16(1.5), np.float32(-2.25), np.float64(1e300), np.complex64(1 - 1j),
              np.complex128(2 + 3j), np.bytes_(b"ab"), np.str_("héllo"),
              np.datetime64("2024-05-06T07:08"), np.timedelta64(-5, "s"),
              np.void(b"\x01\x02")]


@pytest.mark.parametrize("scalar", NP_SCALARS, ids=lambda s: type(s).__name__)
def test_numpy_scalars_round_trip(scalar: np.generic) -> None:
    decoded = roundtrip(scalar)
    assert type(decoded) is type(scalar)
    assert decoded.dtype == scalar.dtype
    assert decoded == scalar


def test_numpy_float_is_not_mistaken_for_a_python_float() -> None:
    assert '"npscalar"' in pyon.encode(np.float64(1.0))
    assert math.isnan(roundtrip(np.float32("nan")))


@pytest.mark.parametrize("value", [object(), frozenset(), bytearray(b"x"), np.array([None])],
                         ids=["object", "frozenset", "bytearray", "object-array"])
def test_unsupported_types_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        pyon.encode(value)


def test_reserved_key_is_refused() -> None:
    with pytest.raises(pyon.PyonError, match="__jsonclass__"):
        pyon.encode({"a": [{"__jsonclass__": ["tuple", [[1]]]}]})


def test_unknown_or_malformed_class_is_refused() -> None:
    with pytest.raises(pyon.PyonError, match="unknown PYON class"):
        pyon.decode('{"__jsonclass__":["os.system",["true"]]}')
    with pytest.raises(pyon.PyonError):
        pyon.decode('{"__jsonclass__":"tuple"}')
    with pytest.raises(pyon.PyonError):
        pyon.decode('{"__jsonclass__":["nparray",[[2],"|O","AAAA"]]}')


V1_CASES = [
    ("{'a': (1, 2), 'b': null, 'c': true, 'd': false}",
     {"a": (1, 2), "b": None, "c": True, "d": False}),
    ("[inf, -inf, 1e3, -4]", [math.inf, -math.inf, 1000.0, -4]),
    ("{1: 'x', (2, 3): [None, True, False]}", {1: "x", (2, 3): [None, True, False]}),
    ("(1+2j, -3.5-1j, 2j)", (1 + 2j, -3.5 - 1j, 2j)),
    ("Fraction(3, 4)", Fraction(3, 4)),
    ("OrderedDict([('b', 1), ('a', 2)])", OrderedDict([("b", 1), ("a", 2)])),
    ("slice(1, 10, None)", slice(1, 10)),
    ("{1, 2}", {1, 2}),
    ("set()", set()),
    ("b'raw'", b"raw"),
]


@pytest.mark.parametrize("text, expected", V1_CASES, ids=[t for t, _ in V1_CASES])
def test_v1_decoding(text: str, expected: Any) -> None:
    decoded = pyon.decode(text)
    assert decoded == expected
    assert type(decoded) is type(expected)


def test_v1_nan_and_numpy_constructors() -> None:
    assert math.isnan(pyon.decode("nan"))
    array = pyon.decode('nparray((2,), "<f8", b"AAAAAAAA8D8AAAAAAAAAQA==")')
    assert_same_array(array, np.array([1.0, 2.0]))
    scalar = pyon.decode('npscalar("int64", b"BQAAAAAAAAA=")')
    assert type(scalar) is np.int64 and scalar == 5
    matrix = pyon.decode('{"m": nparray([2, 2], "<i2", b"AQACAAMABAA=")}')["m"]
    assert matrix.tolist() == [[1, 2], [3, 4]]


MALICIOUS = [
    '__import__("os").system("x")',
    "open('/etc/passwd').read()",
    "(lambda: 1)()",
    "[x for x in (1, 2)]",
    "Fraction.__init__",
    "{**{'a': 1}}",
    "exec('1')",
    "Fraction(*[1, 2])",
    "nparray(shape=(1,), dtype='<f8', data=b'')",
    "1 + 2",
    "'a' - 1j",
    "().__class__",
    "x",
]


@pytest.mark.parametrize("text", MALICIOUS)
def test_v1_refuses_anything_but_literals(text: str, tmp_path: Path) -> None:
    with pytest.raises(pyon.PyonError):
        pyon.decode(text)


def test_v1_never_executes_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(pyon.PyonError):
        pyon.decode(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    assert not marker.exists()


def test_neither_v2_nor_v1_is_an_error() -> None:
    with pytest.raises(pyon.PyonError, match="not PYON"):
        pyon.decode("{unbalanced")
    with pytest.raises(pyon.PyonError):
        pyon.decode("[" * 100000)


def test_decode_accepts_bytes() -> None:
    assert pyon.decode(b'{"a":[1]}') == {"a": [1]}


def test_store_and_load_file(tmp_path: Path) -> None:
    path = tmp_path / "data.pyon"
    value = {"a": (1, 2), 3: np.arange(3), "s": "x"}
    pyon.store_file(path, value)
    text = path.read_text()
    assert text.startswith("{\n    ")  # indented by 4
    loaded = pyon.load_file(path)
    assert loaded["a"] == (1, 2) and loaded["s"] == "x"
    assert_same_array(loaded[3], np.arange(3))


def test_store_file_replaces_atomically_and_leaves_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "last_rid.pyon"
    pyon.store_file(path, 1)
    inode_before = os.stat(path).st_ino
    pyon.store_file(path, 2)
    assert pyon.load_file(path) == 2
    assert os.stat(path).st_ino != inode_before  # a new file took the name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_rid.pyon"]


def test_store_file_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.pyon"
    pyon.store_file(path, {"ok": True})
    with pytest.raises(TypeError):
        pyon.store_file(path, {"bad": object()})
    assert pyon.load_file(path) == {"ok": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pyon"]


def test_load_file_reads_v1(tmp_path: Path) -> None:
    path = tmp_path / "old.pyon"
    path.write_text("{'count': 3, 'pair': (1, 2)}")
    assert pyon.load_file(path) == {"count": 3, "pair": (1, 2)}
