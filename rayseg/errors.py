"""Exceptions raised by rayseg for problems a user can fix."""


class ConfigError(ValueError):
    """A config file, key, override or value is wrong; the message names it."""


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


class CheckpointError(ValueError):
    """A checkpoint is missing or does not match the model; the message names it."""
