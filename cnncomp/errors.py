"""Errors every layer of cnncomp may raise about its input."""


class ConfigError(ValueError):
    """A config value cnncomp cannot run with; the message names it and the allowed values."""
