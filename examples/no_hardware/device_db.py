# The device database of the no-hardware examples: no core device, no controllers.
device_db: dict = {}
