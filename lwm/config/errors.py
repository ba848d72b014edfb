"""The config layer's error: a config file, override or value is wrong."""

from __future__ import annotations

from lwm.errors import LwmError


class ConfigError(LwmError, ValueError):
    """A config file, override or value is wrong; the message says which and how to fix it."""
