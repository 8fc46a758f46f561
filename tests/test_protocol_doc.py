"""docs/protocol.md names exactly what the code sends: commands, extension codes,
error types, topics.  A change to one without the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

from artiq_bus import protocol
from artiq_bus.broker import BROKER_SERVICE
from artiq_bus.protocol.errors import _BUILTIN_ALLOWED, _BUS_ERRORS

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_every_command_is_documented() -> None:
    documented = set(re.findall(r'^\| `"([A-Z]+)"` \|', DOC, re.MULTILINE))
    assert documented == {command.value.decode() for command in protocol.Command}


def test_version_frame_is_documented() -> None:
    assert f'"{protocol.VERSION.decode()}"' in DOC


def test_every_extension_code_is_documented() -> None:
    table = re.findall(r"^\| (\d) \| ([a-z -]+?) \|", DOC, re.MULTILINE)
    codes = {int(code) for code, _ in table}
    assert codes == {value for name, value in vars(protocol.ExtCode).items()
                     if not name.startswith("_")}


def test_every_bus_error_and_allowed_builtin_is_documented() -> None:
    for name in _BUS_ERRORS:
        if name not in ("BusError", "Unavailable"):  # local-only: never on the wire
            assert f"`{name}`" in DOC, name
    for name in _BUILTIN_ALLOWED:
        assert name in DOC, name


def test_topics_are_documented() -> None:
    assert protocol.struct_topic("NAME", "KEY") == b"struct\0NAME\0KEY\0"
    assert protocol.control_topic("NAME") == b"control\0NAME\0"
    assert protocol.stream_topic("NAME") == b"stream\0NAME\0"
    assert protocol.sync_topic(b"TOKEN") == b"sync\0TOKEN"
    for topic in (r"struct\0NAME\0KEY\0", r"control\0NAME\0", r"stream\0NAME\0",
                  r"sync\0TOKEN"):
        assert f"`{topic}`" in DOC


def test_update_actions_are_documented() -> None:
    for action in protocol.UpdateAction:
        assert f"| `{action.value}` |" in DOC


def test_reserved_service_and_status_bytes_are_documented() -> None:
    assert f"## 5. The broker's own service: `{BROKER_SERVICE}`" in DOC
    assert protocol.Status.OK.value == b"\x00" and "`0x00` the body is the result" in DOC
    assert protocol.Status.ERROR.value == b"\x01" and "`0x01` the body is an error" in DOC
