"""Device database and device manager (artiq_bus.worker.devices)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from artiq_bus.rpc import ControllerUnavailable
from artiq_bus.worker import (ControllerUnsupported, DeviceDB, DeviceError, DeviceManager,
                              DummyDevice, unsupported_controller)

from conftest import free_port

DEVICE_MODULE = """\
CLOSED = []
NOTIFIED = []


class Recorder:
    def __init__(self, dmgr, name, gain=1, **extra):
        self.dmgr = dmgr
        self.name = name
        self.gain = gain
        self.extra = extra

    def notify_run_end(self):
        NOTIFIED.append(self.name)

    def close(self):
        CLOSED.append(self.name)


class Failing:
    def __init__(self, dmgr):
        raise RuntimeError("hardware on fire")


class BadClose(Recorder):
    def close(self):
        raise OSError("stuck")
"""


@pytest.fixture
def device_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a fresh importable module holding test device classes."""
    name = f"devices_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(DEVICE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def local(module: str, name: str, cls: str = "Recorder", **arguments: Any) -> dict[str, Any]:
    return {"type": "local", "module": module, "class": cls,
            "arguments": {"name": name, **arguments}}


def write_ddb(path: Path, body: str) -> Path:
    path.write_text(dedent(body))
    return path


# --- DeviceDB (the reference's test_device_db rows) ----------------------------------


def test_missing_device_db_name(tmp_path: Path) -> None:
    path = write_ddb(tmp_path / "device_db.py", "devices = {}\n")
    with pytest.raises(KeyError, match="device_db"):
        DeviceDB(path)


def test_device_db_may_import_siblings(tmp_path: Path) -> None:
    helper = f"ddb_helper_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{helper}.py").write_text("CORE = {'type': 'dummy'}\n")
    path = write_ddb(tmp_path / "device_db.py", f"""\
        from {helper} import CORE
        device_db = {{"core": CORE}}
        """)
    assert DeviceDB(path).get("core") == {"type": "dummy"}


DDB_TEXT = """\
device_db = {
    "dummy": {"type": "dummy"},
    "alias": "dummy",
    "alias2": "alias",
    "unresolved_alias": "nowhere",
}
"""


def test_get_with_and_without_alias_resolution(tmp_path: Path) -> None:
    ddb = DeviceDB(write_ddb(tmp_path / "device_db.py", DDB_TEXT))
    assert ddb.get("alias") == "dummy"
    with pytest.raises(TypeError):
        ddb.get("alias")["type"]
    assert ddb.get("alias", resolve_alias=True) == ddb.get("dummy")
    assert ddb.get("alias2", resolve_alias=True) == {"type": "dummy"}
    with pytest.raises(KeyError):
        ddb.get("unresolved_alias", resolve_alias=True)
    with pytest.raises(KeyError):
        ddb.get("absent")


def test_alias_cycles_are_detected() -> None:
    ddb = DeviceDB.from_dict({"a": "b", "b": "a"})
    with pytest.raises(ValueError, match="a -> b -> a"):
        ddb.get("a", resolve_alias=True)


def test_scan_rereads_sibling_modules(tmp_path: Path) -> None:
    helper = f"ddb_part_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{helper}.py").write_text("PORT = 1\n")
    path = write_ddb(tmp_path / "device_db.py", f"""\
        from {helper} import PORT
        device_db = {{"ctl": {{"type": "controller", "host": "::1", "port": PORT}}}}
        """)
    ddb = DeviceDB(path)
    # a different size: bytecode caches compare source size and mtime (in seconds)
    (tmp_path / f"{helper}.py").write_text("PORT = 22\n")
    ddb.scan()
    assert ddb.get("ctl")["port"] == 22


def test_scan_picks_up_changes_and_get_device_db_is_the_dict(tmp_path: Path) -> None:
    path = write_ddb(tmp_path / "device_db.py", DDB_TEXT)
    ddb = DeviceDB(path)
    namespace: dict[str, Any] = {}
    exec(DDB_TEXT, namespace)
    assert ddb.get_device_db() == namespace["device_db"]
    with path.open("a") as stream:
        stream.write('device_db["new"] = {"type": "dummy", "extra": 1}\n')
    ddb.scan()
    assert ddb.get("new") == {"type": "dummy", "extra": 1}


# --- DeviceManager -------------------------------------------------------------------


def test_local_devices_get_manager_and_arguments(device_module: str) -> None:
    ddb = DeviceDB.from_dict({"amp": local(device_module, "amp", gain=3, extra=True)})
    dmgr = DeviceManager(ddb)
    amp = dmgr.get("amp")
    assert amp.dmgr is dmgr and amp.name == "amp" and amp.gain == 3
    assert amp.extra == {"extra": True}
    assert dmgr.get("amp") is amp


def test_devarg_overrides(device_module: str) -> None:
    ddb = DeviceDB.from_dict({"amp": local(device_module, "amp", gain=3),
                              "amp_alias": "amp", "dummy": {"type": "dummy"}})
    dmgr = DeviceManager(ddb, devarg_override={"amp": {"gain": 10, "new": "x"},
                                               "dummy": {"ignored": 1}})
    amp = dmgr.get("amp")
    assert amp.gain == 10 and amp.extra == {"new": "x"}
    assert dmgr.get("amp_alias") is amp  # same effective description
    assert isinstance(dmgr.get("dummy"), DummyDevice)
    assert ddb.get("amp")["arguments"]["gain"] == 3  # the database is untouched


def test_aliases_and_equal_descriptions_share_instances(device_module: str) -> None:
    ddb = DeviceDB.from_dict({"a": local(device_module, "same"), "b": "a",
                              "c": local(device_module, "same"),
                              "d": local(device_module, "other")})
    dmgr = DeviceManager(ddb)
    assert dmgr.get("a") is dmgr.get("b") is dmgr.get("c")
    assert dmgr.get("d") is not dmgr.get("a")
    assert len(dmgr.active_devices) == 2


def test_virtual_devices_win(device_module: str) -> None:
    scheduler = object()
    ddb = DeviceDB.from_dict({"scheduler": {"type": "dummy"}})
    dmgr = DeviceManager(ddb, virtual_devices={"scheduler": scheduler})
    assert dmgr.get("scheduler") is scheduler
    assert dmgr.active_devices == []


def test_creation_failures(device_module: str) -> None:
    ddb = DeviceDB.from_dict({"bad": {"type": "local", "module": device_module,
                                      "class": "Failing"},
                              "weird": {"type": "teleporter"},
                              "nomodule": {"type": "local", "module": "no_such_mod_xyz",
                                           "class": "X"}})
    dmgr = DeviceManager(ddb)
    with pytest.raises(DeviceError, match="'bad'.*hardware on fire") as info:
        dmgr.get("bad")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(DeviceError, match="weird"):
        dmgr.get("weird")
    with pytest.raises(DeviceError, match="no_such_mod_xyz"):
        dmgr.get("nomodule")
    with pytest.raises(KeyError):
        dmgr.get("absent")
    assert dmgr.active_devices == []


CONTROLLERS = {
    "ctl": {"type": "controller", "host": "::1", "port": 3253, "command": "x"},
    "ctl_aux": {"type": "controller_aux_target", "controller": "ctl",
                "target_name": "ctl_rexec"},
}


def test_a_controller_that_is_not_running_is_a_clear_error() -> None:
    port = free_port()
    dmgr = DeviceManager(DeviceDB.from_dict({"ctl": {**CONTROLLERS["ctl"], "port": port}}))
    with pytest.raises(DeviceError, match=f"no controller at ::1 port {port}") as info:
        dmgr.get("ctl")
    assert isinstance(info.value.__cause__, ControllerUnavailable)


def test_unsupported_controller_factory_is_a_clear_error() -> None:
    dmgr = DeviceManager(DeviceDB.from_dict(CONTROLLERS),
                         controller_factory=unsupported_controller)
    with pytest.raises(DeviceError, match="controllers cannot be used here") as info:
        dmgr.get("ctl")
    assert isinstance(info.value.__cause__, ControllerUnsupported)


class Client:
    def __init__(self, desc: dict[str, Any], closed: list[str]) -> None:
        self.desc = desc
        self.closed = closed

    def close_rpc(self) -> None:
        self.closed.append(self.desc.get("target_name") or "auto")


def test_controller_factory_hook_and_aux_targets() -> None:
    closed: list[str] = []
    dmgr = DeviceManager(DeviceDB.from_dict(CONTROLLERS),
                         controller_factory=lambda desc: Client(desc, closed))
    ctl = dmgr.get("ctl")
    assert ctl.desc == CONTROLLERS["ctl"]
    aux = dmgr.get("ctl_aux")
    assert (aux.desc["type"], aux.desc["host"], aux.desc["port"]) == ("controller", "::1", 3253)
    assert aux.desc["target_name"] == "ctl_rexec" and aux.desc["best_effort"] is False
    dmgr.close_devices()
    assert closed == ["ctl_rexec", "auto"]  # close_rpc, newest first


def test_notify_run_end_and_close_in_reverse_order(device_module: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    ddb = DeviceDB.from_dict({"first": local(device_module, "first"),
                              "second": local(device_module, "second", cls="BadClose"),
                              "third": local(device_module, "third"),
                              "dummy": {"type": "dummy"}})
    dmgr = DeviceManager(ddb)
    for name in ("first", "second", "third", "dummy"):
        dmgr.get(name)
    module = __import__(device_module)
    dmgr.notify_run_end()
    assert module.NOTIFIED == ["first", "second", "third"]
    with caplog.at_level(logging.WARNING):
        dmgr.close_devices()
    assert module.CLOSED == ["third", "first"]  # second's close failed, was logged
    assert "Exception closing device 'second'" in caplog.text
    assert dmgr.active_devices == []
    assert dmgr.get("first") is not None and len(dmgr.active_devices) == 1
