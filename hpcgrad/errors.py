"""Exceptions hpcgrad raises for bad input.

Every error a user can cause derives from :class:`HpcgradError`; the CLI
prints its message (naming the rank where it happened) and exits non-zero on
every rank instead of leaving MPI collectives hanging.
"""


class HpcgradError(Exception):
    """Base class of hpcgrad's user-facing errors."""


class ConfigError(HpcgradError, ValueError):
    """A setting is missing, unknown or out of range."""


class WireFormatError(HpcgradError, ValueError):
    """A message's header or body does not match what the receiver expects."""


class LogFormatError(HpcgradError, ValueError):
    """A file is not an hpcgrad traffic log, or has an unknown format version."""


class NonFiniteError(HpcgradError, FloatingPointError):
    """A gradient or loss is NaN or infinite; sending it would corrupt every worker."""


class LogWriteError(HpcgradError, OSError):
    """The traffic log cannot be written (a full disk, a quota): one line naming the file."""
