"""The project's own error kinds: expected user errors with a message that
names the file, record, key or config field at fault.

The commands (`cli.run`) print these as one line, `error: <message>`, and
exit 1; any other exception is a bug and keeps its traceback. Each kind also
derives from the builtin it replaces, so `except ValueError` keeps working.
"""
from __future__ import annotations


class Error(Exception):
    """Base of every expected error; `str(err)` is the whole message, which
    `cli.run` prints after `prefix` and then exits with `exit_code`."""

    prefix = "error"
    exit_code = 1


class ConfigError(Error, ValueError):
    """A config value out of range, or a config that does not fit a checkpoint."""


class DataError(Error, ValueError):
    """Shards, manifests or records that are missing, corrupt or of another front end."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Shards or a manifest that do not exist."""


class CheckpointError(Error, ValueError):
    """No intact checkpoint, an unreadable one, or a save that failed."""


class AudioError(Error, ValueError):
    """An audio file that is missing, empty, non-finite or undecodable."""


class TaskFileError(Error, ValueError):
    """An evaluation task folder (meta.csv) that is malformed or names missing files."""


class OutputError(Error, OSError):
    """An output file or folder that cannot be created or written."""


class PathError(Error, ValueError):
    """A path of a scheme the project cannot read or write (it takes local and gs:// paths)."""


class LockError(Error, RuntimeError):
    """The workdir is in use by another run."""


class Preempted(Error):
    """The run saved a checkpoint on SIGTERM (a preempted TPU VM, a SLURM
    preemption) and stopped before its last step. Exit status 75 (EX_TEMPFAIL:
    try again): launch/ scripts and SLURM re-run on it; re-running the same
    command resumes. Never a result: nothing final is written."""

    prefix = "preempted"
    exit_code = 75
