"""Controller RPC (artiq_bus.rpc) against real controller processes on loopback ports:
round trips, typed errors, listings, bad input at the port, a controller dying mid-call,
BestEffortClient, the built-in terminate and the insecure-bind rule."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from artiq_bus.net import CurveClient, generate_key_pair, load_public_key, load_secret_key
from artiq_bus.protocol import NoSuchMethod, ProtocolError, RemoteError
from artiq_bus.protocol.rpc import RPC_VERSION, RpcCommand, parse_reply, request_frames
from artiq_bus.rpc import (AsyncioClient, BestEffortClient, Client, ControllerTimeout,
                           ControllerUnavailable, NoSuchTarget)

from conftest import Process, free_port, run_cli
from helpers import HELPERS
from helpers.compare import same

DUMMY = HELPERS / "dummy_controller.py"


class Controller(Process):
    """``dummy_controller.py`` on a free port; ready once it printed READY."""

    def __init__(self, cwd: Path, *extra: str, port: int | None = None):
        self.port = port or free_port()
        super().__init__([sys.executable, str(DUMMY), "-p", str(self.port), *extra], cwd)

    def ready(self) -> "Controller":
        self.wait_for_line("^READY$")
        return self


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """One controller for the tests that do not hurt it."""
    process = Controller(tmp_path_factory.mktemp("controller")).ready()
    yield process
    assert process.stop() == 0, process.output()


@pytest.fixture
def own_controller(tmp_path: Path) -> Iterator[Controller]:
    """A controller the test may kill."""
    process = Controller(tmp_path).ready()
    yield process
    process.stop()


def test_round_trip_of_mixed_values(controller: Controller) -> None:
    value = {1: np.arange(10.0), "t": (1, "two", 3.0), "c": 1 + 2j, "n": None,
             "s": np.int32(-7), "big": np.ones((512, 256)), "b": b"\x00\xff",
             "nested": [{"x": [1, 2]}, (np.float64(1.5),)]}
    with Client("::1", controller.port, "dummy") as client:
        assert same(client.echo(value), value)
        assert client.add(2, b=3) == 5
        assert client.add(a=1.5) == 2.5
        assert client.ping() is True


def test_remote_errors_are_typed(controller: Controller) -> None:
    with Client("::1", controller.port) as client:  # AutoTarget: the only target
        assert client.get_selected_target() == "dummy"
        with pytest.raises(ValueError, match="dummy failure") as info:
            client.fail()
        assert isinstance(info.value, RemoteError)
        assert "dummy_controller.py" in info.value.remote_traceback
        with pytest.raises(TypeError):  # more arguments than add() takes
            client.add(1, 2, 3)
        with pytest.raises(TypeError, match="cannot send"):  # an unencodable argument
            client.echo(object())
        assert client.echo(1) == 1  # the connection survives each of them


def test_only_public_methods_are_callable(controller: Controller) -> None:
    with Client("::1", controller.port, "dummy") as client:
        for name in ("_secret", "nope"):
            with pytest.raises(AttributeError):
                getattr(client, name)
    with _raw_socket(controller.port) as sock:
        for method in ("_secret", "__class__", "nope"):
            sock.send_multipart(request_frames(RpcCommand.CALL, b"1", "dummy", method))
            _, ok, error = parse_reply(sock.recv_multipart())
            assert not ok and isinstance(error, NoSuchMethod), error


def test_listing_targets_and_methods(controller: Controller) -> None:
    with Client("::1", controller.port, "dummy") as client:
        assert client.get_rpc_id() == (["dummy"], "test controller")
        listing = client.get_rpc_method_list()
    assert listing["docstring"] == "A device that does nothing useful."
    methods = listing["methods"]
    assert methods["echo"] == {"signature": "(x: 'Any') -> 'Any'",
                               "docstring": "Return x unchanged."}
    assert methods["add"]["signature"].startswith("(a: 'float', b: 'float' = 1)")
    assert {"ping", "terminate"} <= set(methods)
    assert not any(name.startswith("_") for name in methods)


def test_unknown_target_and_refused_connection(controller: Controller) -> None:
    with pytest.raises(NoSuchTarget, match="no target 'nope'"):
        Client("::1", controller.port, "nope")
    start = time.monotonic()
    port = free_port()
    with pytest.raises(ControllerUnavailable, match=f"no controller at ::1 port {port}"):
        Client("::1", port, "dummy")
    assert time.monotonic() - start < 2.0
    with Client("::1", controller.port, "dummy", timeout=0.2) as client:
        with pytest.raises(ControllerTimeout):  # no answer within the call's timeout
            client.sleep(2)


def test_asyncio_client_runs_calls_concurrently(controller: Controller) -> None:
    async def main() -> None:
        client = AsyncioClient()
        await client.connect_rpc("::1", controller.port, "dummy")
        try:
            results = await asyncio.gather(client.echo([1, 2]), client.add(1, b=2),
                                           client.sleep(0.05), client.ping())
            assert results == [[1, 2], 3, 0.05, True]
            with pytest.raises(ValueError, match="dummy failure"):
                await client.fail()
            with pytest.raises(AttributeError):
                _ = client.nope
        finally:
            client.close_rpc()
    asyncio.run(main())


def test_a_returned_array_is_sent_as_it_was_returned(controller: Controller) -> None:
    """The driver goes on writing the array it returned (the next call fills it): the
    reply still carries the array as it was when returned, never a torn one."""
    async def main() -> None:
        client = AsyncioClient()
        await client.connect_rpc("::1", controller.port, "dummy")
        try:
            for value in range(1, 6):
                # the second call starts as soon as the first has returned
                trace, _ = await asyncio.gather(client.trace(), client.fill(value + 0.5))
                assert np.all(trace == trace[0]), np.unique(trace)
                assert trace[0] == (value - 0.5 if value > 1 else 0.0)
        finally:
            client.close_rpc()
    asyncio.run(main())


@pytest.mark.parametrize("frames", [
    [b"garbage"],
    [b"ABUS1", b"REQ", b"1", b"svc", b"m", b"\0\0\0\1", b"\x90"],  # a bus request
    [RPC_VERSION, b"FOO", b"1"],
    [RPC_VERSION, b"REP", b"1", b"\0", b"\xc0"],
    [RPC_VERSION, b"INFO"],
    [RPC_VERSION, b"INFO", b"x" * 65],
    [RPC_VERSION, b"METHODS", b"1"],
    [RPC_VERSION, b"CALL", b"1", b"dummy"],
    [RPC_VERSION, b"CALL", b"1", b"\xff\xfe", b"echo", b"\x90"],
])
def test_malformed_messages_are_dropped(controller: Controller, frames: list[bytes]) -> None:
    with _raw_socket(controller.port) as sock:
        sock.send_multipart(frames)
        sock.send_multipart(request_frames(RpcCommand.INFO, b"after"))
        request_id, ok, info = parse_reply(sock.recv_multipart())
    assert (request_id, ok, info["targets"]) == (b"after", True, ["dummy"])


def test_undecodable_bodies_get_an_error_reply(controller: Controller) -> None:
    with _raw_socket(controller.port) as sock:
        for body in (b"\xc1", b"\x92\x01\x02", b"\x92\x90\x81\x01\x02"):
            sock.send_multipart([RPC_VERSION, b"CALL", b"7", b"dummy", b"echo", body])
            request_id, ok, error = parse_reply(sock.recv_multipart())
            assert request_id == b"7" and not ok and isinstance(error, ProtocolError)


def test_garbage_bytes_on_the_port_do_not_hurt(controller: Controller) -> None:
    for payload in (b"GET / HTTP/1.0\r\n\r\n", bytes(range(256)) * 64,
                    b"\xff" + b"\0" * 8 + b"\x7f"):
        with socket.create_connection(("::1", controller.port), timeout=5) as raw:
            raw.sendall(payload)
    with Client("::1", controller.port, "dummy") as client:
        assert client.echo("still here") == "still here"


def test_a_controller_dying_mid_call_fails_the_call(own_controller: Controller) -> None:
    with Client("::1", own_controller.port, "dummy") as client:
        start = time.monotonic()
        with pytest.raises(ControllerUnavailable, match="lost"):
            client.die()
        assert time.monotonic() - start < 5.0
        with pytest.raises(ControllerUnavailable):  # no controller: fails at once
            client.echo(1)
    assert own_controller.wait() == 3


def test_a_controller_killed_during_a_long_call(own_controller: Controller) -> None:
    async def main() -> None:
        client = AsyncioClient()
        await client.connect_rpc("::1", own_controller.port, "dummy")
        try:
            call = asyncio.ensure_future(client.sleep(60))
            assert await client.ping()  # the built-in ping answers while sleep() runs
            own_controller.signal(signal.SIGKILL)
            async with asyncio.timeout(5.0):
                with pytest.raises(ControllerUnavailable, match="lost"):
                    await call
        finally:
            client.close_rpc()
    asyncio.run(main())


def test_best_effort_client_gives_none_and_reconnects(tmp_path: Path) -> None:
    port = free_port()
    client = BestEffortClient("::1", port, "dummy", firstcon_timeout=0.5, retry=0.1)
    try:
        assert client.echo(1) is None  # nobody there: None, at once
        controller = Controller(tmp_path, port=port).ready()
        try:
            assert _eventually(lambda: client.echo(2)) == 2
            with pytest.raises(ValueError):  # the method's own errors still raise
                client.fail()
            controller.signal(signal.SIGKILL)
            controller.wait()
            assert _eventually(lambda: client.echo(3) is None) is True
        finally:
            controller.stop()
        controller = Controller(tmp_path, port=port).ready()
        try:
            assert _eventually(lambda: client.echo(4)) == 4
        finally:
            controller.stop()
    finally:
        client.close_rpc()


def test_builtin_terminate_stops_the_controller(own_controller: Controller) -> None:
    with Client("::1", own_controller.port, "dummy") as client:
        assert client.terminate() is None
    assert own_controller.wait() == 0


def test_non_loopback_bind_needs_keys_or_insecure(tmp_path: Path) -> None:
    refused = Controller(tmp_path, "--simple", "--no-localhost-bind", "--bind", "*")
    assert refused.wait() == 4
    assert "needs CurveZMQ keys" in refused.output()
    assert "Traceback" not in refused.output()
    port = free_port()
    insecure = Controller(tmp_path, "--no-localhost-bind", "--bind", "*", "--insecure",
                          port=port).ready()
    try:
        with Client("127.0.0.1", port, "dummy") as client:
            assert client.echo(5) == 5
    finally:
        assert insecure.stop() == 0


def test_a_port_in_use_is_one_line(controller: Controller, tmp_path: Path) -> None:
    second = Controller(tmp_path, "--simple", port=controller.port)
    assert second.wait() == 4
    assert "cannot listen" in second.output() and "Traceback" not in second.output()


# -- helpers ----------------------------------------------------------------------------

class _raw_socket:
    """A bare DEALER on the controller's port (context manager)."""

    def __init__(self, port: int):
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.ipv6 = True
        self.sock.rcvtimeo = 5000
        self.sock.connect(f"tcp://[::1]:{port}")

    def __enter__(self) -> zmq.Socket:
        return self.sock

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()
        self.context.term()


def _eventually(probe, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    """``probe()``'s first truthy result within ``timeout_s`` (paced: a best-effort
    client offers nothing to wait on but its calls)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no truthy result within {timeout_s} s")
        time.sleep(0.05)


def test_curve_keys_protect_a_controller(tmp_path: Path) -> None:
    server_public, server_secret = generate_key_pair(tmp_path / "server", "controller")
    _, client_secret = generate_key_pair(tmp_path / "clients", "me")
    client_secret.rename(tmp_path / "me.key_secret")
    process = Controller(tmp_path, "--curve-secret-key", str(server_secret),
                         "--curve-allowed-keys", str(tmp_path / "clients")).ready()
    try:
        public, secret = load_secret_key(tmp_path / "me.key_secret")
        curve = CurveClient(load_public_key(server_public), public, secret)
        with Client("::1", process.port, "dummy", curve=curve) as client:
            assert client.echo("secret") == "secret"
        with pytest.raises((ControllerUnavailable, ControllerTimeout)):
            Client("::1", process.port, "dummy", connect_timeout=1.0)  # no keys
        result = run_cli("artiq_rpctool", "::1", str(process.port), "--curve-server-key",
                         str(server_public), "--curve-client-key",
                         str(tmp_path / "me.key_secret"), "call", "-t", "dummy", "add", "1")
        assert (result.returncode, result.stdout) == (0, "2\n"), result.stderr
    finally:
        assert process.stop() == 0, process.output()


@pytest.mark.parametrize(("argv", "code", "output"), [
    (["list-targets"], 0, "Target(s):   dummy\nDescription: test controller\n"),
    (["call", "add", "1", "2.5"], 0, "3.5\n"),
    (["call", "-t", "dummy", "echo", '{"a": [1, 2]}'], 0, "{'a': [1, 2]}\n"),
    (["call", "fail"], 1, "artiq_rpctool: ValueError: dummy failure\n"),
    (["call", "echo", "text"], 2, "is not a PYON value"),
    (["call", "nope"], 2, "has no method 'nope'"),
    (["list-methods", "-t", "other"], 2, "no target 'other'"),
])
def test_rpctool(controller: Controller, argv: list[str], code: int, output: str) -> None:
    result = run_cli("artiq_rpctool", "::1", str(controller.port), *argv)
    assert result.returncode == code, result.stderr
    assert output in (result.stdout if code == 0 else result.stderr)
    assert "Traceback" not in result.stderr


def test_rpctool_lists_methods_and_reports_a_missing_controller(
        controller: Controller) -> None:
    result = run_cli("artiq_rpctool", "::1", str(controller.port), "list-methods")
    assert result.returncode == 0, result.stderr
    assert "A device that does nothing useful.\n" in result.stdout
    assert "echo(x: 'Any') -> 'Any'\n    Return x unchanged.\n" in result.stdout
    assert "_secret" not in result.stdout
    result = run_cli("artiq_rpctool", "::1", str(free_port()), "list-targets")
    assert result.returncode == 3 and "connection refused" in result.stderr


def test_protocol_doc_names_every_rpc_command() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    section = doc[doc.index("## 11. Controller RPC"):]
    assert f'`"{RPC_VERSION.decode()}"`' in section
    documented = set(re.findall(r"^\| `([A-Z]+)` \|", section, re.MULTILINE))
    assert documented == {command.value.decode() for command in RpcCommand}
    for error in ("NoSuchTarget", "NoSuchMethod", "ProtocolError", "Overloaded",
                  "EncodeError"):
        assert f"`{error}`" in section
