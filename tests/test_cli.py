"""Arguments a command does not take are refused in one line, exit code 2.

absl reads `--lr 3e-5 1e-4` as `--lr=3e-5` and a positional `1e-4`; every
command goes through `cli.parse` (or `cli.check_positional`, for the training
command's `app.run`), so none drops such arguments without a word.
"""
import importlib
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from matpac_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_POSITIONALS = "takes no positional arguments; give a list as --name=a,b)"


def run_command(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_evaluate_refuses_a_list_given_with_spaces(tmp_path):
    p = run_command("matpac_jax.evaluate", "--checkpoint=logmel-baseline", f"--task={tmp_path}",
                    f"--out={tmp_path / 'o.json'}", "--lr", "3e-5", "1e-4", "3e-4", "1e-3")
    assert p.returncode == 2
    assert p.stderr == ("error: unexpected arguments '1e-4' '3e-4' '1e-3' (python -m "
                        "matpac_jax.evaluate takes no positional arguments; give a list as "
                        "--lr=3e-5,1e-4,3e-4,1e-3)\n")
    assert not (tmp_path / "o.json").exists()


def test_training_command_refuses_positional_arguments(tmp_path):
    p = run_command("matpac_jax.main", "--config=configs/matpac_as2m.py:demo",
                    f"--workdir={tmp_path / 'w'}", "total_steps=10")
    assert p.returncode == 2
    assert p.stderr == ("error: unexpected argument 'total_steps=10' (python -m matpac_jax.main "
                        f"{NO_POSITIONALS}\n")
    assert not (tmp_path / "w").exists()


def _module(name, monkeypatch):
    if name == "benchmarks.profile_step":  # sets an XLA flag at import: not for later tests
        monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    return importlib.import_module(name)


@pytest.mark.parametrize("name, prog, required", [
    ("matpac_jax.data.prepare", "python -m matpac_jax.data.prepare", ["--output=o"]),
    ("matpac_jax.finetune", "python -m matpac_jax.finetune",
     ["--checkpoint=c.pt", "--task=t", "--workdir=w", "--out=o.json"]),
    ("matpac_jax.evaluation.plot_curves", "python -m matpac_jax.evaluation.plot_curves",
     ["--workdir=w", "--out=o.png"]),
    ("matpac_jax.data.demo", "python -m matpac_jax.data.demo", ["--output=o"]),
    ("benchmarks.bench_data", "python benchmarks/bench_data.py", []),
    ("benchmarks.bench_embed", "python benchmarks/bench_embed.py", []),
    ("benchmarks.bench_step", "python benchmarks/bench_step.py", []),
    ("benchmarks.compare_torch", "python benchmarks/compare_torch.py", []),
    ("benchmarks.profile_step", "python benchmarks/profile_step.py", []),
    ("benchmarks.trajectory", "python benchmarks/trajectory.py", ["--method=m2d", "--out=o"]),
])
def test_every_command_refuses_positional_arguments(name, prog, required, monkeypatch, capsys):
    main = _module(name, monkeypatch).main
    with pytest.raises(SystemExit) as e:
        main([*required, "stray"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: unexpected argument 'stray' ({prog} {NO_POSITIONALS}\n"


@pytest.mark.parametrize("argv, hint", [
    (["--seeds", "0", "1"], "give a list as --seeds=0,1"),
    (["--seeds=0", "1"], "give a list as --seeds=0,1"),
])
def test_the_hint_spells_the_list(argv, hint, capsys):
    from matpac_jax import finetune

    with pytest.raises(SystemExit):
        finetune.main(["--checkpoint=c.pt", "--task=t", "--workdir=w", "--out=o.json", *argv])
    assert capsys.readouterr().err.endswith(f"takes no positional arguments; {hint})\n")


def test_a_repeatable_flag_gets_its_own_hint(capsys):
    from matpac_jax.evaluation import plot_curves

    with pytest.raises(SystemExit):
        plot_curves.main(["--workdir", "a", "b", "--out=o.png"])
    assert capsys.readouterr().err.endswith("repeat the flag: --workdir=a --workdir=b)\n")


@pytest.mark.parametrize("name", ["matpac_jax.embed", "matpac_jax.tokenize"])
def test_audio_commands_take_files(name, tmp_path):
    """embed and tokenize take AUDIO files positionally: they reach the file check."""
    from matpac_jax import errors

    main = importlib.import_module(name).main
    with pytest.raises(errors.Error, match="missing.wav"):
        main(["--checkpoint=c.pt", f"--out={tmp_path / 'o.npz'}", str(tmp_path / "missing.wav")])


def test_positional_files_but_not_a_list_tail(tmp_path, capsys):
    """With positional files allowed, a bare value right after a list flag that is
    no file is still refused with the list syntax; files after it stay positional."""
    fv = flags.FlagValues()
    flags.DEFINE_list("lr", ["1"], "rates", flag_values=fv)
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    assert cli.parse(fv, ["--lr", "1", str(audio)], "prog", "doc", positional="AUDIO files") == [
        str(audio)]
    with pytest.raises(SystemExit) as e:
        cli.parse(fv, ["--lr", "1", "2", str(audio)], "prog", "doc", positional="AUDIO files")
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "error: unexpected argument '2' (prog takes AUDIO files as positional arguments, and "
        "these are not files; give a list as --lr=1,2)\n")


def test_unknown_config_field_is_one_line(tmp_path):
    """ml_collections raises a bare AttributeError for `--config.typo=1`; every
    command turns it into one line naming the override, before any work."""
    p = run_command("matpac_jax.main", "--config=configs/matpac_as2m.py:demo",
                    f"--workdir={tmp_path / 'w'}", "--config.model.typo=1")
    assert p.returncode == 2
    assert p.stderr == ("error: --config.model.typo=1: the config has no field 'typo' (the "
                        "fields are those of the config file; python -m matpac_jax.main "
                        "--help)\n")
    assert not (tmp_path / "w").exists()
    from matpac_jax import evaluate

    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--checkpoint=random-init", f"--config={ROOT}/configs/matpac_as2m.py:demo",
                       f"--task={tmp_path}", f"--out={tmp_path / 'o.json'}", "--config.typo=1"])
    assert exit_.value.code == 2
