"""CurveZMQ: keys made by artiq_keygen, a master that requires them, and the refusals.

One client key pair is allowed, another is not; plaintext peers are refused at every
port.  Refusals are observed positively where possible: the peer's socket monitor
reports the failed handshake (ZeroMQ never says "no" in a message).
"""

from __future__ import annotations

import re
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from artiq_bus.client.sync import Client
from artiq_bus.net import CLIENT_KEY_ENV, SERVER_KEY_ENV, BusAddress, CurveClient
from artiq_bus.protocol import DeadlineExceeded, stream_topic, sync_topic, unpack

from conftest import READY_LINE, Master, free_port, run_cli

WAIT_S = 10.0
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Key pairs master, alice (allowed) and bob (not), made by artiq_keygen."""
    directory = tmp_path_factory.mktemp("keys")
    paths = {}
    for name in ("master", "alice", "bob"):
        result = run_cli("artiq_keygen", name, "-d", str(directory))
        assert result.returncode == 0, result.stderr
        public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
        assert f"public key: {public}" in result.stdout and stat.S_IMODE(
            secret.stat().st_mode) == 0o600, result.stdout
        paths[name], paths[f"{name}_secret"] = public, secret
    paths["allowed"] = directory / "allowed"
    paths["allowed"].mkdir()
    shutil.copy(paths["alice"], paths["allowed"])
    return paths


@pytest.fixture(scope="module")
def curve_master(tmp_path_factory: pytest.TempPathFactory,
                 keys: dict[str, Path]) -> Iterator[Master]:
    """One master requiring CurveZMQ, shared by the tests that do not stop it."""
    process = Master(tmp_path_factory.mktemp("curve-master"), "--curve-secret-key",
                     str(keys["master_secret"]), "--curve-allowed-keys",
                     str(keys["allowed"])).wait_ready()
    yield process
    assert process.stop() == 0, process.output()


def curve_of(keys: dict[str, Path], client: str | None) -> CurveClient | None:
    if client is None:
        return None
    return CurveClient.from_files(str(keys["master"]), str(keys[f"{client}_secret"]))


def handshake_event(monitor: zmq.Socket) -> int:
    """The first handshake result a socket monitor reports."""
    deadline = time.monotonic() + WAIT_S
    while (remaining := deadline - time.monotonic()) > 0:
        if monitor.poll(remaining * 1000):
            event = recv_monitor_message(monitor)["event"]
            if event & HANDSHAKE_EVENTS:
                return event
    raise AssertionError("no handshake result within the deadline")


def test_allowed_client(curve_master: Master, keys: dict[str, Path]) -> None:
    for host in ("127.0.0.1", "::1"):
        address = BusAddress.from_host(host, curve_master.control)
        with Client(address, curve=curve_of(keys, "alice")) as client:
            assert client.call("broker", "ping", timeout_s=WAIT_S) is True
            assert client.call("master", "get_name", timeout_s=WAIT_S) is None
            backlog = client.call("log", "backlog", timeout_s=WAIT_S)
            assert isinstance(backlog["records"], list) and isinstance(backlog["seq"], int)


@pytest.mark.parametrize("client", ["bob", None], ids=["unknown-key", "plaintext"])
def test_refused_client(curve_master: Master, keys: dict[str, Path],
                        client: str | None) -> None:
    with Client(curve_master.address, curve=curve_of(keys, client)) as refused:
        with pytest.raises(DeadlineExceeded):
            refused.call("broker", "ping", timeout_s=1.0)
    expected = zmq.EVENT_HANDSHAKE_FAILED_AUTH if client else (
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    ports = {zmq.DEALER: curve_master.control, zmq.SUB: curve_master.notify,
             zmq.PUB: curve_master.publish}
    with zmq.Context() as ctx:
        for kind, port in ports.items():
            with ctx.socket(kind) as sock:
                sock.linger = 0
                curve = curve_of(keys, client)
                if curve is not None:
                    curve.apply(sock)
                monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
                try:
                    sock.connect(f"tcp://127.0.0.1:{port}")
                    event = handshake_event(monitor)
                    assert event & expected, (kind, zmq.Event(event))
                finally:
                    sock.disable_monitor()
                    monitor.close()


def test_plaintext_subscriber_gets_nothing(curve_master: Master,
                                           keys: dict[str, Path]) -> None:
    """An authenticated subscriber gets a log record; a plaintext one never connects."""
    token = sync_topic(b"curve-test")
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as plain, ctx.socket(zmq.SUB) as good:
        for sock in (plain, good):
            sock.linger = 0
        curve = curve_of(keys, "alice")
        assert curve is not None
        curve.apply(good)
        plain.subscribe(b"")
        good.subscribe(stream_topic("log"))
        good.subscribe(token)
        monitor = plain.get_monitor_socket(HANDSHAKE_EVENTS)
        try:
            plain.connect(curve_master.address.notify)
            good.connect(curve_master.address.notify)
            assert good.poll(WAIT_S * 1000) and good.recv_multipart()[0] == token
            with Client(curve_master.address, curve=curve) as client:
                client.call("log", "emit", [{"level": 30, "source": "curve", "time": time.time(),
                                             "name": "test", "message": "for alice only"}])
            assert good.poll(WAIT_S * 1000), "the authenticated subscriber got nothing"
            topic, _, body, *buffers = good.recv_multipart()
            assert topic == stream_topic("log")
            assert [r["message"] for r in unpack(body, buffers)[2]] == ["for alice only"]
            assert handshake_event(monitor) != zmq.EVENT_HANDSHAKE_SUCCEEDED
            while monitor.poll(0):  # no later attempt succeeded either
                event = recv_monitor_message(monitor)["event"]
                assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED
            assert plain.poll(0) == 0
        finally:
            plain.disable_monitor()
            monitor.close()


@pytest.mark.parametrize("how", ["flags", "environment"])
def test_artiq_client_with_keys(tmp_path: Path, keys: dict[str, Path], how: str) -> None:
    master = Master(tmp_path, "--curve-secret-key", str(keys["master_secret"]),
                    "--curve-allowed-keys", str(keys["allowed"])).wait_ready()
    try:
        argv = ["artiq_client", "-s", "127.0.0.1", "--port", str(master.control)]
        env = {}
        if how == "flags":
            argv += ["--curve-server-key", str(keys["master"]),
                     "--curve-client-key", str(keys["alice_secret"])]
        else:
            env = {SERVER_KEY_ENV: str(keys["master"]), CLIENT_KEY_ENV: str(keys["alice_secret"])}
        result = run_cli(*argv, "terminate", env=env)
        assert result.returncode == 0, result.stderr
        assert master.wait() == 0, master.output()
    finally:
        master.stop()


def master_cli(tmp_path: Path, *argv: str) -> tuple[int, str]:
    """Run artiq_master (on free ports) to its end: its exit code and its output."""
    ports = ("--port-control", str(free_port()), "--port-notify", str(free_port()),
             "--port-publish", str(free_port()))
    result = run_cli("artiq_master", *ports, *argv, cwd=tmp_path, timeout_s=20.0)
    output = result.stdout + result.stderr
    assert "Traceback" not in output and READY_LINE not in output, output
    return result.returncode, result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "*"])
def test_public_bind_needs_curve(tmp_path: Path, host: str) -> None:
    code, stderr = master_cli(tmp_path, "--bind", host)
    assert code != 0
    assert stderr.startswith(f"artiq_master: refusing to listen on {host} "), stderr
    assert "--insecure" in stderr and "--curve-secret-key" in stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "*"])
def test_public_bind_insecure(tmp_path: Path, host: str) -> None:
    master = Master(tmp_path, "--bind", host, "--insecure").wait_ready()
    try:
        warning = r"^WARNING:.*(?i:unauthenticated|without authentication)"
        if not any(re.search(warning, line) for line in master.output().splitlines()):
            master.wait_for_line(warning)
        for local in ("127.0.0.1", "::1"):
            with Client(BusAddress.from_host(local, master.control)) as client:
                assert client.call("broker", "ping", timeout_s=WAIT_S) is True
    finally:
        assert master.stop() == 0, master.output()


@pytest.mark.parametrize("flag", ["--curve-secret-key", "--curve-allowed-keys"])
def test_one_curve_flag(tmp_path: Path, keys: dict[str, Path], flag: str) -> None:
    value = keys["master_secret"] if flag == "--curve-secret-key" else keys["allowed"]
    code, stderr = master_cli(tmp_path, flag, str(value))
    assert code != 0
    assert "needs both --curve-secret-key and --curve-allowed-keys" in stderr, stderr


def bad_key_setups(tmp_path: Path, keys: dict[str, Path]) -> dict[str, tuple[Path, Path, Path]]:
    """Name → (secret key file, allowed keys directory, the path the message names)."""
    garbage, malformed = tmp_path / "garbage.key_secret", tmp_path / "malformed.key_secret"
    garbage.write_bytes(b"\x00\xff garbage \x81\n" * 10)
    malformed.write_text('curve\n    public-key = "not~a~key"\n    secret-key = "0123456789"\n')
    empty, with_junk = tmp_path / "empty", tmp_path / "junk"
    empty.mkdir()
    shutil.copytree(keys["allowed"], with_junk)
    (with_junk / "zz.key").write_text("this is not a certificate\n")
    missing = tmp_path / "missing.key_secret"
    secret, allowed = keys["master_secret"], keys["allowed"]
    return {"missing": (missing, allowed, missing), "garbage": (garbage, allowed, garbage),
            "malformed": (malformed, allowed, malformed),
            "public-as-secret": (keys["master"], allowed, keys["master"]),
            "directory-as-secret": (allowed, allowed, allowed),
            "no-allowed-dir": (secret, tmp_path / "nowhere", tmp_path / "nowhere"),
            "empty-allowed-dir": (secret, empty, empty),
            "junk-in-allowed-dir": (secret, with_junk, with_junk / "zz.key")}


@pytest.mark.parametrize("case", ["missing", "garbage", "malformed", "public-as-secret",
                                  "directory-as-secret", "no-allowed-dir",
                                  "empty-allowed-dir", "junk-in-allowed-dir"])
def test_bad_key_files_master(tmp_path: Path, keys: dict[str, Path], case: str) -> None:
    secret, allowed, named = bad_key_setups(tmp_path, keys)[case]
    code, stderr = master_cli(tmp_path, "--curve-secret-key", str(secret),
                              "--curve-allowed-keys", str(allowed))
    assert code != 0
    assert stderr.startswith("artiq_master: ") and str(named) in stderr, stderr


@pytest.mark.parametrize("case", ["missing", "garbage", "malformed", "public-as-secret",
                                  "server-only", "client-only-env"])
def test_bad_key_files_client(tmp_path: Path, keys: dict[str, Path], case: str) -> None:
    """The client checks its keys before it calls anyone (no master runs here)."""
    setups = bad_key_setups(tmp_path, keys)
    argv = ["-s", "127.0.0.1", "--port", str(free_port())]
    env = {}
    if case == "server-only":
        argv += ["--curve-server-key", str(keys["master"])]
    elif case == "client-only-env":
        env = {CLIENT_KEY_ENV: str(keys["alice_secret"])}
    else:
        named = setups[case][0]
        argv += ["--curve-server-key", str(keys["master"]), "--curve-client-key", str(named)]
    result = run_cli("artiq_client", *argv, "terminate", cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("artiq_client: "), result.stderr
    if case in ("server-only", "client-only-env"):
        assert SERVER_KEY_ENV in result.stderr and CLIENT_KEY_ENV in result.stderr
    else:
        assert str(named) in result.stderr, result.stderr
