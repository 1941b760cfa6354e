"""One command-line style for every entry point: absl flags.

`--name=value` (or `--name value`), booleans `--flag` / `--noflag`, lists
as `--name=a,b,c`, repeatable flags given once per value. The training
command (`matpac_jax.main`) parses absl's global flags through `app.run`;
every other command keeps its flags in a `FlagValues` of its own, so several
commands can be imported and called in one process (tests, notebooks) and
`main(argv)` can be called repeatedly.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags


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


def floats(flag_values: flags.FlagValues, name: str) -> list[float]:
    """A list flag's values as floats, or exit 2 naming the flag."""
    try:
        return [float(v) for v in flag_values[name].value]
    except ValueError:
        print(f"error: --{name}={','.join(flag_values[name].value)}: not numbers",
              file=sys.stderr)
        raise SystemExit(2) from None


def output_folder(path: str) -> str:
    """Create the folder a command will write `path` into (before the work starts)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return path
