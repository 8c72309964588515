"""Errors raised where bad input enters raymmft.

Every error carries a one-line message that names the file, field or value at fault; the CLI prints it
as ``error: <message>`` and exits with the error's ``exit_code`` (2 for bad input, 1 for a run that
failed), leaving anything already written untouched.
"""


class RaymmftError(Exception):
    """Base class for user-facing errors (bad config, data, weights, storage)."""

    exit_code = 2


class ConfigError(RaymmftError):
    """A configuration file or override is invalid."""


class ModelError(RaymmftError):
    """A model architecture, pretrained tag or checkpoint cannot be used."""


class DataError(RaymmftError):
    """A dataset spec, path or file cannot be read."""


class StorageError(RaymmftError):
    """A results location (local path, ``s3://``, ``gs://``, ``file://``) cannot be used."""


class ExperimentInUseError(RaymmftError):
    """Another driver holds the experiment's lease (``raymmft.lease``): exit status 1."""

    exit_code = 1


class RunFailedError(RaymmftError):
    """A run started and failed (e.g. its loss became NaN): not bad input, so exit status 1."""

    exit_code = 1


def short_list(names, shown: int = 4) -> str:
    """``[a, b, c, d, ... (1000 in all)]``: a list of names short enough for a one-line error."""
    names = [str(n) for n in names]
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return "[" + ", ".join(names[:shown]) + more + "]"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to
    ``limit`` characters: what a one-line error quotes of a library's exception."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
