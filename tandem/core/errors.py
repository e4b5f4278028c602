"""Typed errors shared by every component. Each message says what to fix."""


class TandemError(Exception):
    """Base class of tandem's own errors."""


class ConfigError(TandemError, ValueError):
    """A config value is wrong. The message names the field and the allowed values."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")


class DeviceNotConnectedError(TandemError, RuntimeError):
    """A device was used before ``connect()`` or after ``disconnect()``."""


class DeviceAlreadyConnectedError(TandemError, RuntimeError):
    """``connect()`` was called twice."""


class DeviceMissingError(TandemError, RuntimeError):
    """A configured device (serial port, camera, gamepad) is not there."""
