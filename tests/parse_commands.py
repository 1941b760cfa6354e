"""Argument parsing of documented commands, without running them (used by
tests/test_docs_commands.py in one subprocess: the commands' flags are absl's,
`matpac_jax.main`'s global ones among them).

stdin: a JSON list of argv lists (`python -m MODULE ARGS...`, MODULE a
matpac_jax command). stdout: a JSON list, per command, of null (the command's
parser took it and every gs://-style path in it is a form the code accepts) or
the error text.
"""
import importlib
import io
import json
import os
import sys
from contextlib import redirect_stderr, redirect_stdout

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from matpac_jax import cli, errors, storage  # noqa: E402

POSITIONAL = {"matpac_jax.embed": "AUDIO files", "matpac_jax.tokenize": "AUDIO files"}


def _paths(values) -> list[str]:
    """Every flag value or config override that names a URI."""
    out = []
    for v in values:
        if isinstance(v, str):
            out += [p for p in v.split(",") if "://" in p]
    return out


def check(argv: list[str]) -> str | None:
    if argv[:2] != ["python", "-m"]:
        return f"not a `python -m` command: {argv}"
    module_name, args = argv[2], argv[3:]
    err = io.StringIO()
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            module = importlib.import_module(module_name)
            if module_name == "matpac_jax.main":
                fv = flags.FLAGS
                cli.parse(fv, args, "python -m matpac_jax.main", module.__doc__)
            else:
                fv = module.FLAGS
                cli.parse(fv, args, f"python -m {module_name}", module.__doc__,
                          positional=POSITIONAL.get(module_name))
        values = [fv[name].value for name in fv if fv[name].present]
        values += [a.partition("=")[2] for a in args if a.startswith("--config.")]
        values += [a for a in args if not a.startswith("-")]
        for path in _paths(values):
            storage.check(path)
    except SystemExit as e:
        return f"exit {e.code}: {err.getvalue().strip()}"
    except errors.Error as e:
        return f"{type(e).__name__}: {e}"
    finally:
        if module_name == "matpac_jax.main":
            flags.FLAGS.unparse_flags()
    return None


if __name__ == "__main__":
    print(json.dumps([check(argv) for argv in json.load(sys.stdin)]))
