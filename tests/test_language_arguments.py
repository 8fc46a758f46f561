"""Argument processors, scans and units (artiq_bus.language)."""

from __future__ import annotations

from typing import Any

import pytest

from artiq_bus.language import units
from artiq_bus.language.processors import (BooleanValue, DefaultMissing, EnumerationValue,
                                           NoDefault, NumberValue, PYONValue, Scannable,
                                           StringValue)
from artiq_bus.language.scan import (CenterScan, ExplicitScan, MultiScanManager, NoScan,
                                     RangeScan, ScanPoint)

# --- NumberValue (the reference's test_arguments rows) -------------------------------


def test_number_value_invalid_default() -> None:
    with pytest.raises(ValueError):
        NumberValue("invalid")


def test_number_value_complex_default() -> None:
    with pytest.raises(TypeError):
        NumberValue(1j)


def test_number_value_without_default() -> None:
    with pytest.raises(DefaultMissing):
        NumberValue().default()


def test_number_value_int_and_float_defaults() -> None:
    integer = NumberValue(42, step=1, precision=0)
    assert integer.default() == 42 and type(integer.default()) is int
    as_float = NumberValue(42)
    assert as_float.default() == 42.0 and type(as_float.default()) is float
    forced = NumberValue(3, type="float", step=1, precision=0)
    assert type(forced.default()) is float


def test_number_value_unknown_unit() -> None:
    with pytest.raises(KeyError, match="Unit bogus is unknown, you must specify the "
                                       "scale manually"):
        NumberValue(1, unit="bogus")
    assert NumberValue(1, unit="bogus", scale=2).scale == 2


def test_number_value_default_scale_and_step() -> None:
    plain = NumberValue(0)
    assert plain.scale == 1.0 and plain.step == 0.1
    timed = NumberValue(0, unit="us")
    assert timed.scale == units.us and timed.step == pytest.approx(units.us / 10)
    assert NumberValue(0, unit="MHz", step=1e5).step == 1e5


def test_number_value_integer_mode_rule() -> None:
    assert type(NumberValue(precision=0, step=1).process("7")) is int
    assert type(NumberValue(precision=0, step=0.5).process(7)) is float
    assert type(NumberValue(precision=1, step=1).process(7)) is float
    assert type(NumberValue(precision=0, step=1, scale=1000).process(7)) is float
    assert type(NumberValue(precision=0, step=1, type="int").process(7.9)) is int
    assert NumberValue(precision=0, step=1).process(7.9) == 7


def test_number_value_type_validation() -> None:
    with pytest.raises(TypeError):
        NumberValue(1, type="complex")
    with pytest.raises(ValueError):
        NumberValue(1, type="int")  # precision 2, step 0.1: not integer-compatible
    with pytest.raises(ValueError):
        NumberValue(1, unit="ms", precision=0, step=1, type="int")


def test_number_value_min_max_are_not_enforced() -> None:
    assert NumberValue(5, min=0, max=1).process(10) == 10.0


def test_number_value_ndecimals_is_a_deprecated_alias() -> None:
    with pytest.warns(DeprecationWarning, match="ndecimals"):
        value = NumberValue(1, ndecimals=4)
    assert value.precision == 4
    with pytest.warns(DeprecationWarning):
        assert Scannable(ndecimals=0).precision == 0


def test_number_value_describe() -> None:
    assert NumberValue(2, "kHz", step=1e3, min=0, max=1e6, precision=3).describe() == {
        "ty": "NumberValue", "default": 2.0, "unit": "kHz", "scale": 1e3, "step": 1e3,
        "min": 0, "max": 1e6, "precision": 3, "type": "auto"}
    described = NumberValue(precision=0, step=1).describe()
    assert "default" not in described and described["type"] == "auto"
    assert NumberValue(1, type="int", precision=0, step=1).describe()["default"] == 1


# --- the other simple processors -----------------------------------------------------


def test_boolean_value_defaults_and_strict_type() -> None:
    assert BooleanValue(True).default() is True
    assert BooleanValue(False).default() is False
    with pytest.raises(ValueError):
        BooleanValue(1)
    with pytest.raises(ValueError):
        BooleanValue().process(0)
    with pytest.raises(DefaultMissing):
        BooleanValue().default()
    assert BooleanValue(True).describe() == {"ty": "BooleanValue", "default": True}
    assert BooleanValue().describe() == {"ty": "BooleanValue"}


def test_enumeration_value_default_validation() -> None:
    with pytest.raises(ValueError):
        EnumerationValue(["abc"], "d")
    assert EnumerationValue(["abc"], "abc").default() == "abc"
    with pytest.raises(ValueError):
        EnumerationValue(["a", "b"]).process("c")
    assert EnumerationValue(["a", "b"], "b", quickstyle=True).describe() == {
        "ty": "EnumerationValue", "default": "b", "choices": ["a", "b"], "quickstyle": True}
    assert EnumerationValue(("x",)).describe() == {
        "ty": "EnumerationValue", "choices": ["x"], "quickstyle": False}


def test_string_value() -> None:
    assert StringValue("x").default() == "x"
    assert StringValue().process("y") == "y"
    assert StringValue("x").describe() == {"ty": "StringValue", "default": "x"}
    assert StringValue().describe() == {"ty": "StringValue"}


def test_list_defaults_are_refused_except_for_pyon_value() -> None:
    for make in (StringValue, BooleanValue, NumberValue):
        with pytest.raises(NotImplementedError):
            make([1, 2])
    assert PYONValue([1, (2, 3)]).default() == [1, (2, 3)]


def test_pyon_value() -> None:
    value = PYONValue({"a": (1, 2)})
    assert value.default() == {"a": (1, 2)}
    assert value.describe() == {
        "ty": "PYONValue", "default": '{"a":{"__jsonclass__":["tuple",[[1,2]]]}}'}
    assert value.process('[1, {"__jsonclass__": ["complex", [0, 1]]}]') == [1, 1j]
    assert value.process("(1, 2)") == (1, 2)  # v1 fallback
    with pytest.raises(TypeError):
        value.process(5)  # supplied values are PYON text
    assert PYONValue().describe() == {"ty": "PYONValue"}
    with pytest.raises(TypeError):
        PYONValue(object())


def test_nodefault_is_the_marker_class() -> None:
    assert NumberValue(NoDefault).describe().get("default", NoDefault) is NoDefault


# --- Scannable -------------------------------------------------------------------------


def test_scannable_describe_and_defaults() -> None:
    scannable = Scannable([RangeScan(0, 1, 3), NoScan(5)], unit="ms", global_max=2)
    assert scannable.default().describe() == RangeScan(0, 1, 3).describe()
    assert scannable.describe() == {
        "ty": "Scannable",
        "default": [{"ty": "RangeScan", "start": 0, "stop": 1, "npoints": 3,
                     "randomize": False, "seed": None},
                    {"ty": "NoScan", "value": 5, "repetitions": 1}],
        "unit": "ms", "scale": 1e-3, "global_step": pytest.approx(1e-4),
        "global_min": None, "global_max": 2, "precision": 2}
    assert list(Scannable(NoScan(1.5)).default()) == [1.5]
    with pytest.raises(DefaultMissing):
        Scannable().default()
    assert "default" not in Scannable().describe()
    with pytest.raises(TypeError):
        Scannable([1, 2])


def test_scannable_process_builds_scans_and_ignores_foreign_keys() -> None:
    processor = Scannable()
    scan = processor.process({"ty": "CenterScan", "center": 10, "span": 4, "step": 1,
                              "randomize": False, "seed": None, "npoints": 99,
                              "start": 0})
    assert isinstance(scan, CenterScan) and list(scan) == [10, 9, 11, 8, 12]
    explicit = processor.process({"ty": "ExplicitScan", "sequence": [3, 1, 2]})
    assert list(explicit) == [3, 1, 2]
    with pytest.raises(ValueError):
        processor.process({"ty": "SpiralScan"})
    with pytest.raises(TypeError):
        processor.process([1, 2])


@pytest.mark.parametrize("scan", [
    NoScan(2.5, 3), RangeScan(1, 2, 5, randomize=True, seed=4), CenterScan(0, 2, 0.5),
    ExplicitScan([1, 5, 2]),
], ids=lambda s: type(s).__name__)
def test_describe_round_trips_through_scannable(scan: Any) -> None:
    rebuilt = Scannable().process(scan.describe())
    assert type(rebuilt) is type(scan)
    assert list(rebuilt) == list(scan)
    assert rebuilt.describe() == scan.describe()


# --- scan sequences ------------------------------------------------------------------


def test_no_scan() -> None:
    assert list(NoScan(7, 3)) == [7, 7, 7] and len(NoScan(7)) == 1
    assert NoScan(7, 2).describe() == {"ty": "NoScan", "value": 7, "repetitions": 2}


def test_range_scan_points() -> None:
    assert list(RangeScan(0, 10, 6)) == [0, 2, 4, 6, 8, 10]
    assert list(RangeScan(1, 0, 3)) == [1, 0.5, 0]
    assert list(RangeScan(3, 9, 1)) == [3]
    assert list(RangeScan(3, 9, 0)) == []
    assert len(RangeScan(0, 1, 11)) == 11
    assert RangeScan(0, 1, 2).describe() == {"ty": "RangeScan", "start": 0, "stop": 1,
                                             "npoints": 2, "randomize": False, "seed": None}


def test_center_scan_order() -> None:
    assert list(CenterScan(5, 4, 1)) == [5, 4, 6, 3, 7]
    assert list(CenterScan(0, 1, 1)) == [0]
    assert list(CenterScan(0, 1, 0)) == []
    assert CenterScan(1, 2, 0.5).describe() == {"ty": "CenterScan", "center": 1,
                                                "step": 0.5, "span": 2, "randomize": False,
                                                "seed": None}


def test_explicit_scan() -> None:
    scan = ExplicitScan((x for x in [3, 1]))
    assert list(scan) == [3, 1] and list(scan) == [3, 1]
    assert scan.describe() == {"ty": "ExplicitScan", "sequence": [3, 1]}


def test_seeded_randomize_is_a_reproducible_permutation() -> None:
    first = list(RangeScan(0, 99, 100, randomize=True, seed=42))
    again = list(RangeScan(0, 99, 100, randomize=True, seed=42))
    other = list(RangeScan(0, 99, 100, randomize=True, seed=43))
    assert first == again and first != other
    assert sorted(first) == list(RangeScan(0, 99, 100))
    assert first != list(RangeScan(0, 99, 100))
    center = list(CenterScan(0, 20, 1, randomize=True, seed=1))
    assert sorted(center) == sorted(CenterScan(0, 20, 1)) and center != list(CenterScan(0, 20, 1))


def test_scans_are_re_iterable() -> None:
    scan = RangeScan(0, 1, 3, randomize=True)
    assert list(scan) == list(scan)


def test_multi_scan_manager_iterates_the_product() -> None:
    manager = MultiScanManager(("a", RangeScan(0, 1, 2)), ("b", ExplicitScan(["x", "y", "z"])))
    points = list(manager)
    assert len(points) == len(manager) == 6
    assert all(isinstance(point, ScanPoint) for point in points)
    assert [(p.a, p.b) for p in points] == [(0, "x"), (0, "y"), (0, "z"),
                                            (1, "x"), (1, "y"), (1, "z")]
    assert list(MultiScanManager(("a", NoScan(1)), ("b", RangeScan(0, 1, 0)))) == []
    with pytest.raises(ValueError):
        MultiScanManager(("a", NoScan(1)), ("a", NoScan(2)))


# --- units -----------------------------------------------------------------------------


def test_units() -> None:
    expected = {
        "ps": 1e-12, "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0,
        "mHz": 1e-3, "Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9, "dB": 1.0,
        "uV": 1e-6, "mV": 1e-3, "V": 1.0, "kV": 1e3, "uA": 1e-6, "mA": 1e-3, "A": 1.0,
        "nW": 1e-9, "uW": 1e-6, "mW": 1e-3, "W": 1.0,
    }
    assert {name: getattr(units, name) for name in units.__all__} == expected
    assert units.UNITS == expected
    assert not hasattr(units, "kA") and not hasattr(units, "THz")
    assert 10 * units.us == pytest.approx(1e-5)
