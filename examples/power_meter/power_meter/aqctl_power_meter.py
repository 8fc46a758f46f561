"""The controller: serves a SimulatedPowerMeter as target ``power_meter``.

    python -m power_meter.aqctl_power_meter -p 3280 [--bind HOST] [--noise 0.02]

Written as an NDSP for ARTIQ is, with artiq_bus.rpc instead of sipyco.pc_rpc.
"""

from __future__ import annotations

import argparse
import logging

from artiq_bus.rpc import common_args, simple_server_loop

from .driver import SimulatedPowerMeter

logger = logging.getLogger(__name__)


def get_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Simulated laser power meter controller")
    common_args.simple_network_args(parser, 3280)
    common_args.verbosity_args(parser)
    parser.add_argument("--power", type=float, default=1e-3,
                        help="nominal laser power in W (default: %(default)s)")
    parser.add_argument("--noise", type=float, default=0.02,
                        help="relative noise of a reading (default: %(default)s)")
    return parser


def main() -> None:
    args = get_argparser().parse_args()
    common_args.init_logger_from_args(args)
    device = SimulatedPowerMeter(power=args.power, noise=args.noise)
    logger.info("serving %s", device.get_identity())
    try:
        simple_server_loop({"power_meter": device}, common_args.bind_address_from_args(args),
                           args.port, description="simulated laser power meter")
    finally:
        device.close()


if __name__ == "__main__":
    main()
