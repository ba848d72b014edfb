"""The one base class of user-facing errors.

Anything a user can cause and fix (a wrong config value, a missing or corrupt file, a store that
does not fit the model, a prompt longer than the cache) raises a subclass of `LwmError` whose
message names the file, line or field and says what to do. The `lwm` command catches `LwmError`
and prints it as one line, `lwm CMD: error: MESSAGE`, with exit code 2; a Python traceback is
shown only with `--debug` or `LWM_DEBUG=1`. Programming errors stay ordinary exceptions.

This module imports nothing from `lwm`, so every layer may use it.
"""

from __future__ import annotations


class LwmError(Exception):
    """A mistake in the user's input or files; the message says which and how to fix it."""

    def __reduce__(self):
        # Subclasses may take other constructor arguments than the message; rebuilding from the
        # message alone keeps an error raised in a data worker process intact across the pickle.
        return (_rebuild, (type(self), str(self)), dict(self.__dict__))


def _rebuild(cls: type, message: str) -> LwmError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error
