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
of the expected ones too. Positional arguments a command does not take are
refused (exit 2, one line), since absl reads `--lr 3e-5 1e-4` as `--lr=3e-5`
plus a stray `1e-4`.
"""
from __future__ import annotations

import logging as py_logging
import os
import sys
from collections.abc import Sequence

from absl import flags, logging

from matpac_jax import errors, storage

TRACEBACK_ENV = "MATPAC_JAX_TRACEBACK"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ORBAX = os.path.join("orbax", "checkpoint")
_ASYNCIO_LOOP = os.path.join("asyncio", "base_events.py")
_ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax's folder for a step until it is complete


def parse(flag_values: flags.FlagValues, argv: Sequence[str] | None, prog: str,
          doc: str, positional: str | None = None) -> list[str]:
    """Parse `argv` (without the program name; None: sys.argv) into `flag_values`
    from their defaults; returns the positional arguments. `--help` prints
    `doc` and the flags and exits 0; a bad flag exits 2 with one line.
    `positional` names what positional arguments are (e.g. "AUDIO files");
    None: the command takes none, and any is refused (`check_positional`)."""
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
    rest = _parse_or_exit(flag_values, [prog, *argv], prog)
    check_positional(flag_values, argv, rest[1:], prog, positional)
    return rest[1:]


def _parse_or_exit(flag_values: flags.FlagValues, argv: Sequence[str], prog: str) -> list[str]:
    """`flag_values(argv)` (argv with the program name); a bad flag or an
    unknown `--config.x=y` field (ml_collections raises a bare AttributeError /
    KeyError for it) exits 2 with one line."""
    try:
        return flag_values(list(argv))
    except flags.Error as e:
        print(f"error: {e} ({prog} --help lists the flags)", file=sys.stderr)
    except (AttributeError, KeyError) as e:
        field = str(e).strip("\"'")
        given = [a for a in argv[1:] if a.startswith("--config.") and
                 field in a.split("=")[0].split(".")]
        print(f"error: {' '.join(given) or '--config.*'}: the config has no field {field!r} "
              f"(the fields are those of the config file; {prog} --help)", file=sys.stderr)
    raise SystemExit(2)


def app_flags_parser(prog: str):
    """`absl.app.run`'s flags_parser for the global FLAGS (matpac_jax.main): the
    same one-line errors as `parse`."""
    return lambda argv: _parse_or_exit(flags.FLAGS, argv, prog)


def _list_tails(flag_values: flags.FlagValues, argv: Sequence[str],
                files_end: bool) -> list[tuple[str, list[str]]]:
    """(flag, its values) of each list or repeatable flag followed by bare
    arguments, as in `--lr 3e-5 1e-4`, where the bare ones were meant as a list
    (`files_end`: up to the first existing file, a positional argument)."""
    out = []
    for i, a in enumerate(argv):
        name, eq, value = a.lstrip("-").partition("=")
        if not a.startswith("-") or name not in flag_values:
            continue
        flag = flag_values[name]
        if not (isinstance(flag, flags.MultiFlag) or isinstance(flag.parser, flags.BaseListParser)):
            continue
        if eq:
            j = i + 1
        elif i + 1 < len(argv):
            value, j = argv[i + 1], i + 2
        else:
            continue
        tail = []
        while j < len(argv) and not argv[j].startswith("-") and not (
                files_end and os.path.exists(argv[j])):
            tail.append(argv[j])
            j += 1
        if tail:
            out.append((name, [value, *tail]))
    return out


def check_positional(flag_values: flags.FlagValues, argv: Sequence[str], rest: Sequence[str],
                     prog: str, positional: str | None = None) -> None:
    """Exit 2 with one line naming the positional arguments `rest` (what absl
    left of `argv`) that `prog` does not take: absl reads `--lr 3e-5 1e-4` as
    `--lr=3e-5` and a stray `1e-4`, which would otherwise be dropped without a
    word. With `positional` allowed, only bare arguments after a list flag that
    are not existing files are refused."""
    tails = _list_tails(flag_values, argv, files_end=positional is not None)
    stray = list(rest) if positional is None else [a for _, v in tails for a in v[1:]]
    if not stray:
        return
    hint = "give a list as --name=a,b"
    for name, values in tails:
        if stray[0] in values[1:]:
            if isinstance(flag_values[name], flags.MultiFlag):
                hint = "repeat the flag: " + " ".join(f"--{name}={v}" for v in values)
            else:
                hint = f"give a list as --{name}={','.join(values)}"
            break
    takes = (f"takes {positional} as positional arguments, and these are not files"
             if positional else "takes no positional arguments")
    quoted = " ".join(f"'{a}'" for a in stray)
    print(f"error: unexpected argument{'s' if len(stray) > 1 else ''} {quoted} "
          f"({prog} {takes}; {hint})", file=sys.stderr)
    raise SystemExit(2)


def run(main, argv: Sequence[str] | None = None) -> int:
    """`main(argv)`'s exit code; an `errors.Error` becomes `error: <message>`
    and 1 (a preemption: `preempted: <message>` and 75, `errors.Preempted`).
    Orbax's harmless tracebacks after a failed save or restore stay off stderr
    (`_AbandonedOrbaxWork`), so that line is the last."""
    _drop_abandoned_orbax_work()
    try:
        return main(argv) or 0
    except errors.Error as e:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        message = " ".join(str(e).split("\n"))
        print(f"{e.prefix}: {message}", file=sys.stderr, flush=True)
        return e.exit_code


class _AbandonedOrbaxWork:
    """`sys.unraisablehook` without the records of work orbax abandons when a
    save or restore fails: its `run_sync` closes its event loop at the first
    error while the other array writes or reads (hundreds for a real model)
    are in flight. Tensorstore reports each one that finishes later as the
    RuntimeError of its `Future.__await__` callback, `loop.call_soon_threadsafe`
    on the closed loop; each suspended orbax coroutine, closed when collected,
    turns its GeneratorExit into another error. A traceback each, after our one
    line; the failure itself is reported (`Checkpointer`) or handled (an older
    checkpoint restored). Every other record goes to the previous hook."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        if not (_closed_loop_callback(unraisable) or _closed_orbax_coroutine(unraisable)):
            self.previous(unraisable)


def _closed_loop_callback(unraisable) -> bool:
    tb = unraisable.exc_traceback
    return (unraisable.object is None and unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed" and tb is not None
            and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"  # called from C++
            and tb.tb_frame.f_code.co_filename.endswith(_ASYNCIO_LOOP))


def _closed_orbax_coroutine(unraisable) -> bool:
    code = getattr(unraisable.object, "cr_code", None)
    return (code is not None and _ORBAX in code.co_filename
            and isinstance(getattr(unraisable.exc_value, "__context__", None), GeneratorExit))


def _drop_abandoned_orbax_work() -> None:
    if not isinstance(sys.unraisablehook, _AbandonedOrbaxWork):
        sys.unraisablehook = _AbandonedOrbaxWork(sys.unraisablehook)


class _OwnInfoOnly(py_logging.Filter):
    """Below WARNING, only records logged from matpac_jax's own files pass.
    Tracebacks of orbax's failures (logged by its threads, or by asyncio for
    its tasks at exit, or for a failed write's future nobody awaited once orbax
    gave up on the save) are dropped too: the same error reaches our
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
    if record.exc_info and _ORBAX_TMP in str(record.exc_info[1]):  # a write into a step
        return True  # being saved (tensorstore's errors carry no Python traceback)
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        if _ORBAX in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def quiet_third_party_logs() -> None:
    """Third-party INFO lines (orbax's dozens per checkpoint) off; ours, and every
    warning, stay. Giving --verbosity (any value) shows them all again."""
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
    starts; errors.OutputError if it cannot be created or written. A gs://
    path needs no folder (its scheme is checked: `errors.PathError`)."""
    if storage.is_remote(storage.check(path, "--out")):
        return path
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
