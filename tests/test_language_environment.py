"""Experiment classes, their environment, and the core decorators (artiq_bus.language)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import pytest

from artiq_bus.language import (BooleanValue, CancelledArgsError, EnumerationValue,
                                EnvExperiment, Experiment, HasEnvironment, NumberValue,
                                StringValue, TerminationRequested, is_experiment,
                                is_public_experiment, kernel, portable, rpc, host_only,
                                set_watchdog_factory, syscall, watchdog)
from artiq_bus.language.core import EmbedKind
from artiq_bus.language.errors import DefaultMissing, ManagerMissing
from artiq_bus.worker import (DatasetManager, DeviceDB, DeviceManager, DummyDevice,
                              LocalDatasetBackend, ProcessArgumentManager)


def managers(arguments: dict[str, Any] | None = None,
             argument_mgr: Any = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    ddb = DeviceDB.from_dict({"dev": {"type": "dummy"}, "alias": "dev"})
    return (DeviceManager(ddb), DatasetManager(LocalDatasetBackend()),
            argument_mgr or ProcessArgumentManager(arguments or {}), {})


class Recorder(EnvExperiment):
    """Records its stages."""

    def build(self, tag: str = "none") -> None:
        self.tag = tag
        self.calls = ["build"]
        self.setattr_argument("count", NumberValue(3, precision=0, step=1))

    def prepare(self) -> None:
        super().prepare()
        self.calls.append("prepare")

    def run(self) -> None:
        self.calls.append("run")

    def analyze(self) -> None:
        self.calls.append("analyze")


def test_constructor_calls_build_with_extra_arguments() -> None:
    exp = Recorder(managers({"count": 5}), tag="x")
    assert exp.tag == "x" and exp.count == 5 and exp.calls == ["build"]
    exp.prepare()
    exp.run()
    exp.analyze()
    assert exp.calls == ["build", "prepare", "run", "analyze"]


def test_experiment_base_stages() -> None:
    assert Experiment().prepare() is None and Experiment().analyze() is None
    with pytest.raises(NotImplementedError):
        Experiment().run()


def test_constructor_needs_managers_or_parent() -> None:
    with pytest.raises(TypeError):
        Recorder({"count": 1})
    with pytest.raises(TypeError):
        Recorder((None, None, None))


def test_argument_methods_are_build_only() -> None:
    exp = Recorder(managers())
    with pytest.raises(TypeError, match="build"):
        exp.get_argument("late", NumberValue(1))
    with pytest.raises(TypeError, match="build"):
        exp.setattr_argument("late", NumberValue(1))
    with pytest.raises(TypeError, match="build"):
        exp.set_default_scheduling(priority=3)


def test_get_argument_returns_without_setting_attribute() -> None:
    class Exp(EnvExperiment):
        def build(self) -> None:
            self.value = self.get_argument("x", StringValue("d"), group="g", tooltip="t")

    exp = Exp(managers({"x": "supplied"}))
    assert exp.value == "supplied" and not hasattr(exp, "x")


def test_missing_argument_without_default() -> None:
    class Exp(EnvExperiment):
        def build(self) -> None:
            self.setattr_argument("count", NumberValue(precision=0, step=1))

    with pytest.raises(DefaultMissing, match="count"):
        Exp(managers())
    assert Exp(managers({"count": 4.0})).count == 4


def test_processor_is_required() -> None:
    class Exp(EnvExperiment):
        def build(self) -> None:
            self.setattr_argument("x")

    with pytest.raises(TypeError, match="processor"):
        Exp(managers())


def test_kernel_invariants_are_per_instance() -> None:
    class Exp(EnvExperiment):
        kernel_invariants = {"fixed"}

        def build(self) -> None:
            self.setattr_argument("flag", BooleanValue(True))
            self.setattr_device("dev")

    exp = Exp(managers())
    assert exp.kernel_invariants == {"fixed", "flag", "dev"}
    assert Exp.kernel_invariants == {"fixed"}
    assert isinstance(exp.dev, DummyDevice)


def test_devices_and_device_db() -> None:
    exp = Recorder(managers())
    assert exp.get_device("alias") is exp.get_device("dev")
    assert exp.get_device_db() == {"dev": {"type": "dummy"}, "alias": "dev"}
    with pytest.raises(KeyError):
        exp.get_device("nope")


def test_datasets_through_the_environment() -> None:
    exp = Recorder(managers())
    exp.set_dataset("x", [1], unit="ms", broadcast=True)
    exp.append_to_dataset("x", 2)
    exp.mutate_dataset("x", 0, 5)
    assert exp.get_dataset("x") == [5, 2]
    assert exp.get_dataset_metadata("x") == {"unit": "ms"}
    assert exp.get_dataset("missing", 7) == 7
    assert exp.get_dataset_metadata("missing", {}) == {}
    with pytest.raises(KeyError):
        exp.get_dataset("missing")
    with pytest.raises(KeyError):
        exp.get_dataset_metadata("missing")
    exp.setattr_dataset("x")
    assert exp.x == [5, 2]
    exp.setattr_dataset("other", default=None)
    assert exp.other is None and "other" not in getattr(exp, "kernel_invariants", set())


def test_missing_manager_is_a_clear_error() -> None:
    class Bare(EnvExperiment):
        def run(self) -> None:
            self.set_dataset("x", 1)

    exp = Bare((None, None, None, {}))
    with pytest.raises(ManagerMissing, match="dataset manager"):
        exp.run()
    with pytest.raises(ManagerMissing, match="device manager"):
        exp.get_device("x")


class Child(HasEnvironment):
    def build(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.setattr_argument(f"{name}_gain", NumberValue(1.0))
        self.set_default_scheduling(priority=9)

    def prepare(self) -> None:
        self.log.append(f"prepare {self.name}")

    def run(self) -> None:
        self.log.append(f"run {self.name}")


class Parent(EnvExperiment):
    def build(self) -> None:
        self.log: list[str] = []
        self.a = Child(self, "a", self.log)
        self.b = Child(self, name="b", log=self.log)
        self.plain = HasEnvironment(self)
        self.set_default_scheduling(priority=2, pipeline_name="fast", flush=True)

    def run(self) -> None:
        pass


def test_children_share_managers_and_get_prepare_only() -> None:
    defaults: dict[str, Any] = {}
    mgrs = managers({"b_gain": 4})[:3] + (defaults,)
    exp = Parent(mgrs)
    assert exp.children == [exp.a, exp.b, exp.plain]
    assert exp.a.a_gain == 1.0 and exp.b.b_gain == 4.0
    exp.prepare()
    exp.run()
    assert exp.log == ["prepare a", "prepare b"]  # children's run is not called
    exp.call_child_method("run")
    assert exp.log[-2:] == ["run a", "run b"]
    # children's scheduling defaults are private; the top level's are published
    assert defaults == {"priority": 2, "pipeline_name": "fast", "flush": True}


def test_unqueried_arguments_are_reported_after_build() -> None:
    argument_mgr = ProcessArgumentManager({"count": 1, "typo": 2, "extra": 3})
    Recorder(managers(argument_mgr=argument_mgr))
    with pytest.raises(AttributeError, match="Supplied argument\\(s\\) not queried in "
                                             "experiment: extra, typo"):
        argument_mgr.check_unprocessed_arguments()


class AskingManager(ProcessArgumentManager):
    """Answers interactive requests from a list of canned answers."""

    def __init__(self, answers: list[dict[str, Any] | None]) -> None:
        super().__init__({})
        self.answers = answers
        self.requests: list[tuple[list[Any], str]] = []

    def get_interactive(self, arglist_desc: list[Any], title: str) -> dict[str, Any] | None:
        self.requests.append((arglist_desc, title))
        return self.answers.pop(0)


class Interactive(EnvExperiment):
    def build(self) -> None:
        pass

    def run(self) -> None:
        with self.interactive(title="Repeat?") as ns:
            ns.setattr_argument("repeat", BooleanValue(True))
            ns.setattr_argument("count", NumberValue(precision=0, step=1), "grp", "tip")
            ns.setattr_argument("mode", EnumerationValue(["a", "b"]))
        self.ns = ns


def test_interactive_requests_and_processes_values() -> None:
    manager = AskingManager([{"repeat": False, "count": 3.0, "mode": "b"}])
    exp = Interactive(managers(argument_mgr=manager))
    exp.run()
    [(arglist, title)] = manager.requests
    assert title == "Repeat?"
    assert arglist == [
        ("repeat", {"ty": "BooleanValue", "default": True}, None, None),
        ("count", NumberValue(precision=0, step=1).describe(), "grp", "tip"),
        ("mode", {"ty": "EnumerationValue", "choices": ["a", "b"], "quickstyle": False},
         None, None),
    ]
    assert exp.ns.repeat is False and exp.ns.count == 3 and type(exp.ns.count) is int
    assert exp.ns.mode == "b"
    assert not hasattr(exp.ns, "setattr_argument")


def test_interactive_cancel_and_bad_values() -> None:
    exp = Interactive(managers(argument_mgr=AskingManager([None])))
    with pytest.raises(CancelledArgsError):
        exp.run()
    exp = Interactive(managers(argument_mgr=AskingManager(
        [{"repeat": 1, "count": 3, "mode": "a"}])))
    with pytest.raises(ValueError):  # BooleanValue refuses 1
        exp.run()
    exp = Interactive(managers(argument_mgr=AskingManager([{"repeat": True}])))
    with pytest.raises(ValueError, match="requested"):
        exp.run()


def test_interactive_block_that_raises_sends_no_request() -> None:
    manager = AskingManager([])
    exp = Recorder(managers(argument_mgr=manager))
    with pytest.raises(RuntimeError):
        with exp.interactive() as ns:
            ns.setattr_argument("x", BooleanValue())
            raise RuntimeError("boom")
    assert manager.requests == []


def test_interactive_key_twice_is_refused() -> None:
    exp = Recorder(managers(argument_mgr=AskingManager([])))
    with pytest.raises(ValueError, match="twice"):
        with exp.interactive() as ns:
            ns.setattr_argument("x", BooleanValue())
            ns.setattr_argument("x", BooleanValue())


def test_is_experiment() -> None:
    class _Private(EnvExperiment):
        pass

    class Plain:
        pass

    assert is_experiment(Recorder) and is_public_experiment(Recorder)
    assert is_experiment(_Private) and not is_public_experiment(_Private)
    for other in (Experiment, EnvExperiment, HasEnvironment, Plain, Recorder(managers()), 3):
        assert not is_experiment(other)


def test_decorators_are_pass_through_markers() -> None:
    class Dev:
        @kernel
        def k(self, x: int) -> int:
            return x + 1

        @kernel("core2", flags={"fast-math"})
        def k2(self) -> str:
            return "k2"

        @portable
        def p(self) -> int:
            return 2

        @rpc(flags={"async"})
        def r(self) -> int:
            return 3

        @host_only
        def h(self) -> int:
            return 4

    @syscall(flags={"nounwind"})
    def rtio_output(target: int) -> None:
        raise NotImplementedError("syscall not simulated")

    dev = Dev()
    assert (dev.k(1), dev.k2(), dev.p(), dev.r(), dev.h()) == (2, "k2", 2, 3, 4)
    assert Dev.k.artiq_embedded.kind is EmbedKind.KERNEL
    assert Dev.k.artiq_embedded.core_name == "core"
    assert Dev.k2.artiq_embedded.core_name == "core2"
    assert Dev.k2.artiq_embedded.flags == {"fast-math"}
    assert Dev.r.artiq_embedded.flags == {"async"}
    assert Dev.h.artiq_embedded.kind is EmbedKind.HOST_ONLY
    assert rtio_output.artiq_embedded.syscall_name == "rtio_output"
    assert EnvExperiment.set_dataset.artiq_embedded.flags == {"async"}


def test_watchdog_factory_is_settable() -> None:
    with watchdog(0.001):
        pass  # default: nothing enforced
    entered: list[float] = []

    @contextlib.contextmanager
    def recording(timeout: float) -> Iterator[None]:
        entered.append(timeout)
        yield

    set_watchdog_factory(recording)
    try:
        with watchdog(2.5):
            with watchdog(0.5):
                pass
    finally:
        set_watchdog_factory(None)
    assert entered == [2.5, 0.5]
    with watchdog(1.0):
        pass
    assert entered == [2.5, 0.5]


def test_termination_requested_is_an_exception() -> None:
    with pytest.raises(TerminationRequested):
        raise TerminationRequested


@pytest.mark.parametrize("package", ["artiq_bus.language", "artiq_bus.experiment",
                                     "artiq_bus.worker"])
def test_star_import_gives_exactly_all(package: str) -> None:
    module = importlib.import_module(package)
    namespace: dict[str, Any] = {}
    exec(f"from {package} import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(module.__all__)
    assert len(module.__all__) == len(set(module.__all__))
    language = importlib.import_module("artiq_bus.language")
    assert {"EnvExperiment", "NumberValue", "us", "MHz", "kernel", "TInt32",
            "MultiScanManager", "CancelledArgsError"} <= set(language.__all__)
