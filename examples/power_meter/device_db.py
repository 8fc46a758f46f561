# The device database of the power meter example: one controller, run by artiq_ctlmgr
# on this host.  {python} is the controller manager's interpreter; the environment
# makes the example's package importable.
from pathlib import Path

device_db = {
    "power_meter": {
        "type": "controller",
        "host": "::1",
        "port": 3280,
        "command": "{python} -m power_meter.aqctl_power_meter -p {port} --bind {bind}",
        "environment": {"PYTHONPATH": str(Path(__file__).resolve().parent)},
    },
}
