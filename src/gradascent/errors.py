"""User-facing errors and warnings. The command line prints their message on one line (errors: and exits
non-zero)."""

from __future__ import annotations


class GradascentError(Exception):
    """A problem with the user's input (config, data, model files, hyperparameters): never a bug."""


class ConfigError(GradascentError, ValueError):
    """A config key that is unknown, of the wrong type, or out of range."""


class DataError(GradascentError, ValueError):
    """A dataset file or row that cannot be used; the message names the file and line."""


class CheckpointError(GradascentError):
    """A checkpoint or model directory that is missing, truncated or corrupt."""


class NonFiniteError(GradascentError):
    """Training produced NaN or inf too often to continue (or a reward function returned one)."""


class GradascentWarning(UserWarning):
    """Something in the user's input or run worth knowing that does not stop it (data the tokenizer cannot
    encode, episodes cut without ending); the command line prints it on one line."""
