"""pack()/unpack(): round trips, out-of-band buffers, HDF5 compatibility, errors, garbage."""

import collections
import enum
import io
import math
import random

import h5py
import msgpack
import numpy as np
import pytest
import zmq

from artiq_bus.protocol import (OUT_OF_BAND_MIN_BYTES, EncodeError, ExtCode, ProtocolError,
                                UpdateAction, pack, unpack)

NESTED = np.dtype([("a", "<i4"), ("pos", "<f8", (3,)),
                   ("inner", [("x", ">f4"), ("tag", "S3"), ("m", "<i2", (2, 2))]),
                   ("flag", "?")])
PADDED = np.dtype([("a", "i1"), ("b", "<f8"), ("c", "u2")], align=True)  # has padding

HDF5_DTYPES = [np.dtype(d) for d in (
    "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16",
    "S7", ">f8", ">i4", ">c16")] + [NESTED, PADDED]
ALL_DTYPES = HDF5_DTYPES + [np.dtype("<U5")]
SHAPES = [(), (0,), (5,), (3, 4), (2, 3, 4)]


def dtype_id(dtype):
    return {NESTED: "nested", PADDED: "padded"}.get(dtype, dtype.str)


def make_array(dtype, shape, rng):
    """Values for every kind, with extremes and IEEE specials up front."""
    dtype = np.dtype(dtype)
    if dtype.subdtype is not None:
        base, sub = dtype.subdtype
        return make_array(base, shape + sub, rng)
    if dtype.names is not None:
        out = np.zeros(shape, dtype)
        for name in dtype.names:
            out[name] = make_array(dtype.fields[name][0], shape, rng)
        return out
    size = math.prod(shape)
    kind = dtype.kind
    if kind == "b":
        out = rng.integers(0, 2, size=shape).astype(dtype)
        specials = [True, False]
    elif kind in "iu":
        info = np.iinfo(dtype)
        out = rng.integers(info.min, info.max, size=shape, endpoint=True,
                           dtype=dtype.newbyteorder("=")).astype(dtype)
        specials = [info.min, info.max, 0, -1 if kind == "i" else 1]
    elif kind == "f":
        out = (rng.standard_normal(shape) * 1e3).astype(dtype)
        specials = [np.nan, np.inf, -np.inf, -0.0]
    elif kind == "c":
        out = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        specials = [complex(np.nan, 1), complex(np.inf, -np.inf), complex(-0.0, 0)]
    elif kind == "S":
        words = [bytes(rng.integers(97, 123, rng.integers(0, dtype.itemsize + 1)).tolist())
                 for _ in range(size)]
        out = np.array(words, dtype).reshape(shape)
        specials = [b"", b"x" * dtype.itemsize]
    elif kind == "U":
        chars = "aZé\u03bb\U0001f600\u4e2d"
        words = ["".join(rng.choice(list(chars), rng.integers(0, dtype.itemsize // 4 + 1)))
                 for _ in range(size)]
        out = np.array(words, dtype).reshape(shape)
        specials = ["", "\U0001f600" * 5]
    else:
        raise AssertionError(dtype)
    out = np.asarray(out, dtype)  # rng and astype return (native) scalars for shape ()
    assert out.dtype == dtype and out.shape == shape
    flat = out.reshape(-1)
    for i, value in enumerate(specials[:size]):
        flat[i] = value
    return out


def assert_values_equal(out, ref):
    """Equal dtype, shape and values, field by field; bit-exact (NaN payloads, -0.0)."""
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if ref.dtype.names is not None:  # (padding bytes are not values)
        for name in ref.dtype.names:
            assert_values_equal(out[name], ref[name])
    else:
        np.testing.assert_array_equal(out, ref, strict=True)  # NaN == NaN here
        assert np.ascontiguousarray(out).tobytes() == np.ascontiguousarray(ref).tobytes()


def assert_identical(out, ref):
    """An ndarray in C order with the same dtype, shape and values."""
    assert isinstance(out, np.ndarray) and out.flags.c_contiguous
    assert_values_equal(out, ref)


def roundtrip(value):
    body, buffers = pack(value)
    assert isinstance(body, bytes)
    return unpack(body, buffers)


def h5_roundtrip(value):
    with h5py.File(io.BytesIO(), "w") as f:
        f.create_dataset("x", data=value)
        return f["x"][...]  # an array even for a scalar dataset


def assert_strict_equal(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, (float, complex)):
        assert repr(a) == repr(b)  # exact, NaN-aware, sign of zero
    elif isinstance(a, slice):
        assert_strict_equal([a.start, a.stop, a.step], [b.start, b.stop, b.step])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_strict_equal(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b) and [type(k) for k in a] == [type(k) for k in b]
        for key in a:
            assert_strict_equal(a[key], b[key])
    else:
        assert a == b


PY_VALUES = {
    "none": None, "true": True, "false": False, "zero": 0, "neg": -17, "int64max": 2**63 - 1,
    "int64min": -2**63, "uint64max": 2**64 - 1, "float": 1.5, "negzero": -0.0,
    "nan": math.nan, "inf": math.inf, "neginf": -math.inf, "tiny": 5e-324,
    "str": "", "unicode": "h\u00e9llo \u03bb \U0001f600 \u4e2d\x00", "bytes": b"",
    "allbytes": bytes(range(256)), "list": [1, "a", None, [2.5, []]],
    "dict": {"a": {"b": {"c": [1, {"d": None}]}}, 1: "one", -2: {3: 4}, (1, "x"): [5],
             ((1, 2), ()): "nested tuple key", b"raw": 0.5},
    "tuple": (1, (2, (3, ())), "x"), "empty_tuple": (), "tuple_in_list": [(1,), ((),)],
    "complex": complex(1.5, -2.25), "complex_nan": complex(math.nan, math.inf),
    "slice": slice(1, None, -2), "slice_none": slice(None), "slice_odd": slice("a", 2.5),
    "mixed": {"arr": [complex(0, 1), slice(3), (None, True)]},
}


@pytest.mark.parametrize("value", PY_VALUES.values(), ids=PY_VALUES.keys())
def test_python_value_roundtrip(value):
    assert_strict_equal(roundtrip(value), value)


class Color(enum.IntEnum):
    RED = 3


@pytest.mark.parametrize("value, expected", [
    (Color.RED, 3), (UpdateAction.SETITEM, "setitem"),
    (collections.OrderedDict(a=1), {"a": 1}), (collections.defaultdict(list, b=[2]), {"b": [2]}),
    (type("MyList", (list,), {})([1, 2]), [1, 2]), (type("MyBytes", (bytes,), {})(b"q"), b"q"),
    (type("MyFloat", (float,), {})(2.5), 2.5),
])
def test_subclasses_travel_as_base_type(value, expected):
    assert_strict_equal(roundtrip(value), expected)


SCALARS = [np.bool_(True), np.bool_(False)] + [
    t(v) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                   np.uint64)
    for v in (np.iinfo(t).min, np.iinfo(t).max, 1)] + [
    t(v) for t in (np.float16, np.float32, np.float64)
    for v in (1.5, -0.0, np.nan, np.inf, -np.inf, np.finfo(t).tiny, np.finfo(t).max)] + [
    t(v) for t in (np.complex64, np.complex128)
    for v in (complex(1, -2), complex(np.nan, np.inf))] + [
    np.bytes_(b"abc"), np.bytes_(b""), np.zeros(2, "S5")[0], np.bytes_(bytes(range(1, 256))),
    np.array(1.25, ">f8")[()], make_array(NESTED, (1,), np.random.default_rng(1))[0],
    make_array(PADDED, (1,), np.random.default_rng(2))[0]]
NON_HDF5_SCALARS = [np.str_("h\u00e9\U0001f600"), np.str_("")]


@pytest.mark.parametrize("scalar, hdf5", [(s, True) for s in SCALARS] +
                         [(s, False) for s in NON_HDF5_SCALARS], ids=repr)
def test_numpy_scalar_roundtrip(scalar, hdf5):
    out = roundtrip(scalar)
    assert type(out) is type(scalar) and out.dtype == scalar.dtype
    assert_values_equal(out, scalar)
    assert_values_equal(roundtrip({"k": [scalar]})["k"][0], scalar)  # inside containers
    if hdf5:
        assert_values_equal(h5_roundtrip(out), out)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_array_roundtrip(dtype, shape):
    array = make_array(dtype, shape, np.random.default_rng(len(shape)))
    out = roundtrip(array)
    assert_identical(out, array)
    assert out.flags.writeable and not np.shares_memory(out, array)
    if dtype in HDF5_DTYPES:
        assert_values_equal(h5_roundtrip(out), array)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (300, 50)], ids=str)
@pytest.mark.parametrize("dtype", [np.dtype("f8"), np.dtype(">i2"), np.dtype("c8"), NESTED],
                         ids=dtype_id)
def test_fortran_and_strided_input_decodes_to_c_order(dtype, shape):
    array = make_array(dtype, shape, np.random.default_rng(7))
    for variant in (np.asfortranarray(array), array[::-1], array.T):
        assert not variant.flags.c_contiguous or variant.ndim < 2
        assert_identical(roundtrip(variant), variant)


TITLED = np.dtype([(("Temperature in K", "temp"), "<f8"), ("n", "<i4", (2,))])


@pytest.mark.parametrize("dtype, offsets", [(PADDED, [0, 8, 16]), (TITLED, [0, 0, 8])],
                         ids=["padded", "titled"])
def test_structured_layout_and_titles_survive(dtype, offsets):
    array = make_array(dtype, (4,), np.random.default_rng(3))
    out = roundtrip(array)
    assert out.dtype == dtype and out.dtype.itemsize == dtype.itemsize
    assert [out.dtype.fields[n][1] for n in out.dtype.fields] == offsets
    assert out.dtype.names == dtype.names
    assert_identical(out, array)


@pytest.fixture(scope="module")
def pair():
    ctx = zmq.Context()
    tx, rx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    tx.bind("inproc://codec-test")
    rx.connect("inproc://codec-test")
    yield tx, rx
    ctx.destroy(linger=0)


def over_zmq(pair, value):
    tx, rx = pair
    body, buffers = pack(value)
    tx.send_multipart([body, *buffers], copy=False)
    frames = rx.recv_multipart(copy=False)
    assert len(frames) == 1 + len(buffers)
    return unpack(frames[0].buffer, frames[1:]), frames


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_large_array_travels_out_of_band_zero_copy(pair, dtype):
    n = OUT_OF_BAND_MIN_BYTES // dtype.itemsize + 1
    array = make_array(dtype, (n,), np.random.default_rng(5))
    body, buffers = pack(array)
    assert len(buffers) == 1
    assert memoryview(buffers[0]).nbytes == array.nbytes
    assert len(body) < 1024
    out, frames = over_zmq(pair, array)
    assert_identical(out, array)
    assert np.shares_memory(out, np.frombuffer(frames[1].buffer, np.uint8))
    assert out.flags.writeable
    out.reshape(-1).view(np.uint8)[0] ^= 0xFF  # really writable, really the frame
    assert np.frombuffer(frames[1].buffer, np.uint8)[0] == out.reshape(-1).view(np.uint8)[0]


def test_out_of_band_threshold_is_inclusive():
    exact = np.arange(OUT_OF_BAND_MIN_BYTES // 8, dtype="f8")
    assert len(pack(exact)[1]) == 1
    assert len(pack(exact[:-1])[1]) == 0
    assert len(pack(np.asfortranarray(exact.reshape(16, -1)))[1]) == 1


def test_large_zero_dim_array_and_read_only_frames():
    array = np.array(b"q" * OUT_OF_BAND_MIN_BYTES, dtype=f"S{OUT_OF_BAND_MIN_BYTES}")
    body, buffers = pack(array)
    assert len(buffers) == 1 and array.ndim == 0
    assert_identical(unpack(body, buffers), array)
    big = np.arange(10_000, dtype="i8")
    body, buffers = pack(big)
    out = unpack(body, [bytes(b) for b in buffers])  # read-only frame: copy
    assert_identical(out, big)
    assert out.flags.writeable


def test_several_large_arrays_are_numbered_in_order(pair):
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal(20_000), rng.integers(0, 9, (300, 300)).astype("u2")
    small = np.arange(3)
    value = {"a": a, "rest": [small, (b, "x")]}
    assert len(pack(value)[1]) == 2
    out, _ = over_zmq(pair, value)
    for got, ref in ((out["a"], a), (out["rest"][0], small), (out["rest"][1][0], b)):
        assert_identical(got, ref)
    assert out["rest"][1][1] == "x"


def test_ten_million_float64():
    array = np.random.default_rng(0).standard_normal(10_000_000)
    array[::1_000_000] = np.nan
    body, buffers = pack(array)
    assert len(buffers) == 1
    out = unpack(body, buffers)
    assert out.dtype == np.float64 and out.shape == (10_000_000,)
    np.testing.assert_array_equal(out, array)
    assert np.shares_memory(out, array)  # the buffer is the array's own memory


class Custom:
    pass


@pytest.mark.parametrize("value", [
    {1, 2}, frozenset(), Custom(), object(), 2**70, -2**70, 2**64, -2**63 - 1, len, Custom,
    np.array([1, "a"], dtype=object), np.array(None), np.zeros(2, [("a", "f8"), ("o", "O")]),
    np.zeros(3, np.dtype({"names": ["a", "b"], "formats": ["i4", "i4"], "offsets": [4, 0]})),
    {"deep": [{"x": {3}}]}, [np.array([None, 1])], (1, Custom()), {Custom: 1},
], ids=repr)
def test_unencodable_values_raise_encode_error(value):
    with pytest.raises(EncodeError) as info:
        pack(value)
    assert isinstance(info.value, TypeError)


def raw_ext(code, data):
    """ext 8 by hand: msgpack.ExtType refuses negative codes."""
    return b"\xc7" + bytes([len(data), code & 0xFF]) + data


def ext(code, payload):
    return raw_ext(code, msgpack.packb(payload, use_bin_type=True))


Z8 = b"\0" * 8
MALFORMED = {
    "bad_dtype": ext(1, ["not-a-dtype", [1], Z8]), "dtype_int": ext(1, [5, [1], Z8]),
    "dtype_bad_descr": ext(1, [[["a", "<f8", 1, 2]], [1], Z8]),
    "dtype_descr_junk": ext(1, [[7], [1], Z8]), "object_dtype": ext(1, ["|O", [1], Z8]),
    "object_field": ext(1, [[["a", "|O"]], [1], Z8]), "object_scalar": ext(2, ["|O", Z8]),
    "shape_mismatch": ext(1, ["<f8", [3], Z8 * 2]), "shape_small": ext(1, ["<f8", [1], Z8 * 2]),
    "negative_shape": ext(1, ["<f8", [-1], b""]), "neg_shapes": ext(1, ["<f8", [-1, -1], Z8]),
    "float_shape": ext(1, ["<f8", [1.0], Z8]), "shape_not_list": ext(1, ["<f8", 1, Z8]),
    "huge_shape": ext(1, ["<f8", [2**64 - 1], Z8]), "frame_missing": ext(1, ["<f8", [1], 0]),
    "frame_negative": ext(1, ["<f8", [1], -1]), "data_str": ext(1, ["<f8", [1], "12345678"]),
    "array_arity": ext(1, ["<f8", [1]]), "array_not_list": ext(1, 3),
    "zero_itemsize_array": ext(1, ["|S0", [2], b""]), "scalar_short": ext(2, ["<f8", Z8[:4]]),
    "scalar_data_int": ext(2, ["<f8", 5]), "scalar_arity": ext(2, ["<f8", Z8, 1]),
    "tuple_int": ext(3, 5), "complex_arity": ext(4, [1.0]), "complex_str": ext(4, ["1", 2.0]),
    "slice_arity": ext(5, [1, 2, 3, 4]), "slice_empty": ext(5, []),
    "payload_garbage": raw_ext(1, b"\xc1\xc1"), "payload_truncated": ext(1, ["<f8", [1], Z8])[:-3],
    "nested_bad": msgpack.packb([1, {"k": msgpack.ExtType(3, ext(4, [None, None]))}]),
    "unhashable_key": msgpack.packb({msgpack.ExtType(1, msgpack.packb(["<f8", [1], Z8])): 1}),
    "bad_timestamp": raw_ext(-1, b"\0" * 5), "trailing_data": msgpack.packb(1) * 2, "empty": b"",
    **{f"unknown_code_{c}": ext(c, [1]) for c in (0, 6, 42, 127, -2, -128)},
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_extension_raises_protocol_error(body):
    assert (ExtCode.NDARRAY, ExtCode.NPSCALAR, ExtCode.TUPLE, ExtCode.COMPLEX,
            ExtCode.SLICE) == (1, 2, 3, 4, 5)
    with pytest.raises(ProtocolError):
        unpack(body)


def test_frame_index_and_size_checked_against_buffers():
    body, buffers = pack(np.zeros(10_000))
    with pytest.raises(ProtocolError):
        unpack(body)  # frame 0 missing
    with pytest.raises(ProtocolError):
        unpack(body, [bytes(buffers[0])[:-8]])
    for index in (1, -1):
        with pytest.raises(ProtocolError):
            unpack(ext(ExtCode.NDARRAY, ["<f8", [1], index]), [Z8])
    assert unpack(ext(ExtCode.NDARRAY, ["<f8", [1], 0]), [b"\0" * 8]).tolist() == [0.0]


def decode_or_protocol_error(body, buffers=()):
    try:
        unpack(body, buffers)
    except ProtocolError:
        return False
    return True


def test_random_bytes_raise_only_protocol_error():
    rng = random.Random(1234)
    ok = 0
    for _ in range(5000):
        body = rng.randbytes(rng.randrange(0, 48))
        ok += decode_or_protocol_error(body, [rng.randbytes(16)])
    assert 0 < ok < 5000


def test_mutated_valid_bodies_raise_only_protocol_error():
    rng = random.Random(99)
    corpus = [pack(v) for v in (
        {"a": np.arange(6, dtype="<i4").reshape(2, 3), "b": (1, complex(1, 2), slice(4))},
        [np.float32(2.5), np.zeros(3, NESTED), np.array(["ab", "c"]), b"xyz"],
        np.zeros(10_000, PADDED), (np.bytes_(b"q"), {(1, 2): [None, True, 1.5]}))]
    failures = 0
    for _ in range(4000):
        body, buffers = rng.choice(corpus)
        body = bytearray(body)
        for _ in range(rng.randrange(1, 4)):  # overwrite, delete or insert a few bytes
            pos = rng.randrange(len(body) + 1)
            body[pos:pos + rng.randrange(4)] = rng.randbytes(rng.randrange(4))
        failures += not decode_or_protocol_error(bytes(body), buffers)
    assert failures > 1000

