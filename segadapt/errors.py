"""Expected errors: the CLI turns these into a one-line message and an exit code, no traceback."""


class SegadaptError(Exception):
    """Base class. ``exit_code`` 1 = data/runtime error, 2 = usage error."""

    exit_code = 1


class DataError(SegadaptError):
    """Missing/corrupt input files, incompatible checkpoints, refused overwrites."""

    exit_code = 1


class UsageError(SegadaptError):
    """Bad option values, unknown config keys."""

    exit_code = 2
