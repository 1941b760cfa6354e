"""The docs run as written: every command in the configs' docstrings, README.md
and docs/LAUNCH.md is accepted by its CLI (argument parsing for `python -m
matpac_jax.*`, `--dry-run` for launch/ scripts), and no path in them is of a
form the code refuses."""
import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "LAUNCH.md", *sorted((ROOT / "configs").glob("*.py"))]


def _lines(text: str) -> list[str]:
    """Logical lines: backslash continuations joined, `$ ` prompts dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    return out


def commands(text: str, markdown: bool) -> list[str]:
    """`python -m matpac_jax...` and `launch/...sh` commands, one per `&&` part:
    in markdown those of fenced code blocks and inline code spans, in a config
    its docstring's lines. Usage schemas (`[--flag ...]`, `...`) are skipped."""
    if markdown:
        fence = r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```"
        blocks = [b for lang, b in re.findall(fence, text, re.M | re.S) if lang in ("bash", "sh")]
        spans = [s for s in re.findall(r"`([^`\n]+)`", re.sub(fence, "", text, flags=re.M | re.S))
                 if " --" in s]  # a command, not a mention of one
        lines = [ln for b in blocks for ln in _lines(b)] + spans
    else:
        lines = _lines(text.split('"""')[1])
    found = []
    for line in lines:
        for part in line.split(" && "):
            part = part.split(" # ")[0].strip()
            if (re.match(r"(python -m matpac_jax\.|(bash )?launch/\S+\.sh)", part)
                    and "..." not in part
                    and "[" not in re.sub(r'"\$\{\w+\[@\]\}"', "", part)):
                found.append(part)
    return found


def _arrays(text: str) -> str:
    """The docs' bash arrays (`TPU=(...)`, `RUN=(...)`) as bash source."""
    return "\n".join(m.group(0) for m in re.finditer(r"^\s*[A-Z]+=\([^)]*\)", text, re.M | re.S))


ALL = {doc: commands(doc.read_text(), doc.suffix == ".md") for doc in DOCS}


def test_the_docs_have_the_commands_users_run():
    found = [c for cs in ALL.values() for c in cs]
    for needed in ("python -m matpac_jax.data.prepare", "python -m matpac_jax.main",
                   "python -m matpac_jax.finetune", "python -m matpac_jax.export",
                   "launch/tpu/prepare_data.sh", "launch/tpu/keepalive.sh"):
        assert any(c.startswith(needed) for c in found), needed
    assert len(ALL[ROOT / "configs" / "matpac_as2m.py"]) == 3  # prepare, train, demo


def test_every_python_command_parses_and_names_accepted_paths():
    argvs = [shlex.split(c, comments=True) for cs in ALL.values() for c in cs
             if c.startswith("python -m")]
    # {placeholders} in prose are fine to the parser; ${ARRAYS} are launch/'s.
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "parse_commands.py")],
                          input=json.dumps(argvs), capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = [(" ".join(a), e) for a, e in zip(argvs, json.loads(done.stdout)) if e]
    assert not failed, "\n".join(f"{c}\n  -> {e}" for c, e in failed)


@pytest.mark.parametrize("doc", [d for d in DOCS if any("launch/" in c for c in ALL[d])],
                         ids=lambda d: d.name)
def test_every_launch_command_dry_runs(doc, tmp_path):
    arrays = _arrays(doc.read_text())
    for cmd in (c for c in ALL[doc] if "launch/" in c):
        if "demo_packages.sh" in cmd:
            cmd = cmd.replace("launch/demo_packages.sh", "launch/demo_packages.sh --dry-run")
        elif " -- " in cmd:
            cmd = cmd.replace(" -- ", " --dry-run -- ", 1)
        elif "--dry-run" not in cmd:
            cmd += " --dry-run"
        if "prepare_data.sh" in cmd and "--num-workers" not in cmd:
            cmd += " --num-workers 2"  # a dry run asks gcloud nothing
        done = subprocess.run(["bash", "-c", f"{arrays}\n{cmd}"], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert done.returncode == 0, f"{cmd}\n{done.stderr[-2000:]}"
        assert "/mnt/gcs" not in done.stdout, cmd  # data and workdirs go to gs:// directly


def test_the_checker_catches_what_users_would_hit():
    bad = [["python", "-m", "matpac_jax.data.prepare", "--input=a", "--frontend=matpac",
            "--output=s3://bucket/x"],
           ["python", "-m", "matpac_jax.main", "--config=configs/matpac_as2m.py",
            "--workdir=/w", "--config.data.no_such_field=1"],
           ["python", "-m", "matpac_jax.export", "--checkpoint=/w", "--out=x.pt", "--stepp=3"]]
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "parse_commands.py")],
                          input=json.dumps(bad), capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    errors = json.loads(done.stdout)
    assert "s3:// scheme is not supported" in errors[0]
    assert "no_such_field" in errors[1] and "stepp" in errors[2]
