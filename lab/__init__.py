"""The VM lab: a qemu VM with a real kernel LIO, configfs and device-mapper, for tests and demos."""

from lab.vm import Lab, LabCommandError, LabError, LabResult, SpawnHandle, SpawnStatus

__all__ = ["Lab", "LabCommandError", "LabError", "LabResult", "SpawnHandle", "SpawnStatus"]
