"""Errors a user can cause. The CLI prints these as one clear line; anything else is a bug."""

from __future__ import annotations


class ClmkitError(Exception):
    """Base class: bad input or environment, reported to the user without a traceback."""


class ModelLoadError(ClmkitError):
    """A model could not be found, read, converted or cached."""


class InputError(ClmkitError):
    """A prompt, option or file the user gave is invalid."""
