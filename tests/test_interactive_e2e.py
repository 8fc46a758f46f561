"""Interactive arguments through a real master and worker: the request appears in the
``interactive_args`` struct, a supplied value reaches the experiment, a cancel raises
CancelledArgsError in it, and a wrong key set is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from artiq_bus.client.replica import Replica
from artiq_bus.client.sync import Client

from conftest import Master, run_cli
from helpers import bus_client

EXPERIMENT = '''
from artiq.experiment import *

class Ask(EnvExperiment):
    def build(self):
        pass

    def run(self):
        try:
            with self.interactive(title="Repeat?") as interactive:
                interactive.setattr_argument("repeat", BooleanValue(True))
                interactive.setattr_argument("count", NumberValue(1, precision=0, step=1))
        except CancelledArgsError:
            print("cancelled")
            return
        print("answer", interactive.repeat, interactive.count)
'''


def _wait_for_request(master: Master, rid: int, timeout_s: float = 20.0) -> dict[str, Any]:
    """The run's request, as a replica of ``interactive_args`` (one key) shows it."""
    async def wait() -> dict[str, Any]:
        async with bus_client(master) as (_, client, subscriber):
            replica = Replica(client, subscriber, "interactive_args", service="scheduler",
                              key_filter=rid)
            await replica.start()
            try:
                await replica.wait_for(lambda value: rid in value, timeout_s)
                return replica.value[rid]
            finally:
                await replica.stop()
    return asyncio.run(wait())


def _submit(master: Master, tmp_path: Path) -> int:
    (tmp_path / "ask.py").write_text(EXPERIMENT)
    result = run_cli("artiq_client", "-s", "127.0.0.1", "--port", str(master.control),
                     "submit", str(tmp_path / "ask.py"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("RID:")[1])


def test_supplied_values_reach_the_experiment(master: Master, tmp_path: Path) -> None:
    rid = _submit(master, tmp_path)
    request = _wait_for_request(master, rid)
    with Client(master.address) as client:
        assert request["title"] == "Repeat?"
        assert [desc[0] for desc in request["arglist_desc"]] == ["repeat", "count"]
        assert request["arglist_desc"][0][1]["ty"] == "BooleanValue"
        with pytest.raises(ValueError):
            client.call("scheduler", "supply_interactive", rid, {"repeat": False})
        client.call("scheduler", "supply_interactive", rid, {"repeat": False, "count": 3})
    master.wait_for_line(rf"^INFO:worker\({rid},ask\.py\):print:answer False 3$")


def test_cancel_raises_cancelled_args_error(master: Master, tmp_path: Path) -> None:
    rid = _submit(master, tmp_path)
    _wait_for_request(master, rid)
    with Client(master.address) as client:
        client.call("scheduler", "cancel_interactive", rid)
        master.wait_for_line(rf"^INFO:worker\({rid},ask\.py\):print:cancelled$")
        with pytest.raises(KeyError):
            client.call("scheduler", "cancel_interactive", rid)
