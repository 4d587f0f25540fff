"""Typed errors for bad input. Messages name the file, field or timestamp and say what to do."""

from __future__ import annotations


class NearfieldError(Exception):
    """Base of every error nearfield raises for bad input; the CLI prints it as one line."""


class CalibrationError(NearfieldError):
    """A camera calibration is missing a field, has an impossible value or is not invertible."""


class RigError(NearfieldError):
    """A rig file is malformed or inconsistent."""


class LogFormatError(NearfieldError):
    """A log is unreadable, truncated or carries messages that do not decode."""


class SensorError(NearfieldError):
    """A live or replayed sensor source cannot be opened or delivers unusable data."""


class ConfigError(NearfieldError):
    """A configuration or command-line value is invalid."""


class ChecksumError(NearfieldError):
    """A weights or model file does not match the sha256 recorded for it (damaged, truncated or replaced)."""


class DeployError(NearfieldError):
    """An exported or compressed model fails a deploy check (operators, parity, backend), or a backend cannot run."""


class TrainingError(NearfieldError):
    """A training run diverged (non-finite loss or weights) and was stopped before saving the damage."""
