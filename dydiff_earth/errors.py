"""Errors that a user can fix: the CLI turns them into one line on stderr and exit status 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad input (path, format, variable, time axis, option); the message says what to do.

    The CLI prints ``error: <message>`` and exits with status 2, never a traceback.
    """


class StaleInputError(InputError):
    """The newest input frame is older than a job allows (exit status 3 in ``run``)."""


class MissingVariableError(InputError):
    """A requested variable is not in the input (the message lists the available ones)."""
