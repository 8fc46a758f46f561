from artiq.experiment import *
import time

import numpy as np


class ReadPower(EnvExperiment):
    """Read the laser power"""

    def build(self):
        self.setattr_device("power_meter")
        self.setattr_device("ccb")
        self.setattr_argument("samples", NumberValue(50, precision=0, step=1, min=1,
                                                     type="int"))
        self.setattr_argument("interval", NumberValue(0.1, unit="s", min=0))

    def run(self):
        print("Reading", self.power_meter.get_identity())
        self.set_dataset("power_meter.readings", np.full(self.samples, np.nan),
                         unit="mW", broadcast=True)
        self.ccb.issue("create_applet", "laser power",
                       "${artiq_applet}plot_xy power_meter.readings")
        for i in range(self.samples):
            self.mutate_dataset("power_meter.readings", i, self.power_meter.read_power())
            time.sleep(self.interval)  # the sampling period asked for
        readings = self.get_dataset("power_meter.readings")
        self.set_dataset("power_meter.mean", float(np.mean(readings)), unit="mW",
                         broadcast=True)
        self.set_dataset("power_meter.std", float(np.std(readings)), unit="mW",
                         broadcast=True)
