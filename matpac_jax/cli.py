"""One command-line style for every entry point: absl flags.

`--name=value` (or `--name value`), booleans `--flag` / `--noflag`, lists
as `--name=a,b,c`, repeatable flags given once per value. The training
command (`matpac_jax.main`) parses absl's global flags through `app.run`;
every other command keeps its flags in a `FlagValues` of its own, so several
commands can be imported and called in one process (tests, notebooks) and
`main(argv)` can be called repeatedly.

Every command's `__main__` goes through `run`: the project's own errors
(`matpac_jax.errors.Error`: config, data, checkpoint, audio, task files,
workdir lock) print one line, `error: <message>`, and exit 1; other
exceptions keep their traceback. MATPAC_JAX_TRACEBACK=1 shows the traceback
of the expected ones too.
"""
from __future__ import annotations

import logging as py_logging
import os
import sys
from collections.abc import Sequence

from absl import flags

from matpac_jax import errors

TRACEBACK_ENV = "MATPAC_JAX_TRACEBACK"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ORBAX = os.path.join("orbax", "checkpoint")


def parse(flag_values: flags.FlagValues, argv: Sequence[str] | None, prog: str,
          doc: str) -> list[str]:
    """Parse `argv` (without the program name; None: sys.argv) into `flag_values`
    from their defaults; returns the positional arguments. `--help` prints
    `doc` and the flags and exits 0; a bad flag exits 2 with one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
        print(f"usage: {prog} [flags] ...\n\n{doc.strip()}\n")
        print(flag_values.get_help())
        raise SystemExit(0)
    flag_values.unparse_flags()
    # ml_collections config flags find their `--config.x=y` overrides in
    # `_sys_argv` (else sys.argv, which is not `main(argv)`'s) and define one
    # flag per override at parse time: point them at argv, drop the last call's.
    configs = [n for n, f in flag_values._flags().items() if hasattr(f, "_sys_argv")]  # pylint: disable=protected-access
    for name in list(flag_values):
        if any(name.startswith(c + ".") for c in configs):
            delattr(flag_values, name)
    for name in configs:
        flag_values[name]._sys_argv = [prog, *argv]  # pylint: disable=protected-access
    try:
        rest = flag_values([prog, *argv])
    except flags.Error as e:
        print(f"error: {e} ({prog} --help lists the flags)", file=sys.stderr)
        raise SystemExit(2) from None
    return rest[1:]


def run(main, argv: Sequence[str] | None = None) -> int:
    """`main(argv)`'s exit code; an `errors.Error` becomes `error: <message>` and 1."""
    try:
        return main(argv) or 0
    except errors.Error as e:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        message = " ".join(str(e).split("\n"))
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 1


class _OwnInfoOnly(py_logging.Filter):
    """Below WARNING, only records logged from matpac_jax's own files pass.
    Tracebacks of orbax's failures (logged by its threads, or by asyncio for
    its tasks at exit) are dropped too: the same error reaches our
    `Checkpointer`, which reports it in one line."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.pathname.startswith(_PACKAGE_DIR):
            return True
        if record.exc_info and _from_orbax(record):
            return False
        return record.levelno >= py_logging.WARNING


def _from_orbax(record: py_logging.LogRecord) -> bool:
    if _ORBAX in record.pathname:
        return True
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        if _ORBAX in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def quiet_third_party_logs() -> None:
    """Third-party INFO lines (orbax's dozens per checkpoint) off; ours, and every
    warning, stay. Giving --verbosity (any value) shows them all again."""
    from absl import logging

    if flags.FLAGS["verbosity"].present:
        return
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
        handler.addFilter(_OwnInfoOnly())


def floats(flag_values: flags.FlagValues, name: str) -> list[float]:
    """A list flag's values as floats, or exit 2 naming the flag."""
    try:
        return [float(v) for v in flag_values[name].value]
    except ValueError:
        print(f"error: --{name}={','.join(flag_values[name].value)}: not numbers",
              file=sys.stderr)
        raise SystemExit(2) from None


def output_folder(path: str) -> str:
    """Create the folder a command will write `path` into, before the work
    starts; errors.OutputError if it cannot be created or written."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise errors.OutputError(f"{path}: cannot create its folder {folder}: "
                                 f"{e.strerror or e}") from None
    if not os.access(folder, os.W_OK) or os.path.isdir(path):
        raise errors.OutputError(f"{path}: " + ("a folder, expected a file name"
                                                if os.path.isdir(path) else
                                                f"the folder {folder} is not writable"))
    return path
