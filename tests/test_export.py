"""Export to the official formats (matpac_jax.export), torch-free.

Each workdir starts from an official fixture file (`init_from`) and is saved
before any update, so exporting it must give that file back: the same keys,
shapes and bits. Trained workdirs are exported in tests/test_init_from.py.
"""
import collections
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import matpac_jax
from matpac_jax import errors
from matpac_jax import export
from matpac_jax.conversion import torch_pickle, torch_save

from helpers import config, saved_at_start

CASES = {  # official fixture -> (config, overrides)
    "m2d_checkpoint-300.pth": ("m2d_as2m", {"data.crop_frames": 192}),
    "matpac_flat.pt": ("matpac_as2m", {"data.crop_frames": 192}),
    "BEATs_small.pt": ("beats_iter1_as2m", {"data.crop_frames": 64}),
    "Tokenizer_small.pt": ("beats_tokenizer_as2m", {"data.crop_frames": 64}),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fixtures_dir):
    """fixture name -> (workdir, Exported) for every official format."""
    out = {}
    for name, (cfg, overrides) in CASES.items():
        tmp = tmp_path_factory.mktemp(name.split(".")[0])
        extra = {"teacher_checkpoint": str(fixtures_dir / "BEATs_small.pt")} \
            if cfg == "beats_tokenizer_as2m" else {}
        c = config(cfg, init_from=str(fixtures_dir / name), **overrides, **extra)
        wd = saved_at_start(c, tmp / "workdir")
        out[name] = wd, export.export(wd, tmp / "out" / name)
    return out


def _model(obj):
    return obj["model"] if "model" in obj else obj


@pytest.mark.parametrize("name", list(CASES))
def test_export_of_an_imported_file_is_that_file(exported, fixtures_dir, name):
    ref = torch_pickle.load(fixtures_dir / name)
    got = torch_pickle.load(exported[name][1].path)
    assert type(got) is type(ref) and sorted(got) == sorted(ref)  # same container
    r, g = _model(ref), _model(got)
    assert type(g) is type(r)
    assert sorted(g) == sorted(r)
    for k in r:
        assert g[k].shape == r[k].shape and g[k].dtype == r[k].dtype, k
        if "pos_embed" in k:  # the fixed sin-cos table, recomputed
            np.testing.assert_allclose(g[k], r[k], atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(g[k], r[k], err_msg=k)
    if "cfg" in ref:
        assert ref["cfg"].items() <= got["cfg"].items()
    if name.startswith("m2d"):
        assert got["epoch"] == 0 and got["args"]["input_size"] == "80x192"


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("Tokenizer")])
def test_exported_file_gives_the_workdirs_embeddings(exported, name):
    workdir, done = exported[name]
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 40000)]
    np.testing.assert_allclose(matpac_jax.load(done.path).clip_embeddings(waves),
                               matpac_jax.load(workdir).clip_embeddings(waves),
                               rtol=1e-5, atol=1e-6)


def test_export_writes_the_path_given_and_names_m2ds_folder(exported, tmp_path):
    done = exported["m2d_checkpoint-300.pth"][1]
    assert pathlib.Path(done.path).name == "m2d_checkpoint-300.pth"
    assert pathlib.Path(done.path).parent.name == "out" and os.path.isfile(done.path)
    assert any("folder named m2d_vit_base-80x192p16x16/" in n for n in done.notes)
    # In a folder already named as M2D's runtime parses it: no note.
    again = export.export(exported["m2d_checkpoint-300.pth"][0],
                          tmp_path / "m2d_vit_base-80x192p16x16" / "checkpoint-0.pth")
    assert again.path == str(tmp_path / "m2d_vit_base-80x192p16x16" / "checkpoint-0.pth")
    assert not any("folder named" in n for n in again.notes)


def test_export_cli(exported, tmp_path):
    workdir = exported["matpac_flat.pt"][0]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "matpac_encoder.pt"
    done = subprocess.run([sys.executable, "-m", "matpac_jax.export", f"--checkpoint={workdir}",
                           f"--out={out}", "--step=0"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "[matpac format]" in done.stdout and out.exists()
    bad = subprocess.run([sys.executable, "-m", "matpac_jax.export", f"--checkpoint={workdir}",
                          f"--out={out}", "--step=7"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "no checkpoint of step 7" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_export_refuses_an_official_file(fixtures_dir, tmp_path):
    with pytest.raises(errors.CheckpointError, match="not a training workdir"):
        export.export(fixtures_dir / "matpac_flat.pt", tmp_path / "x.pt")


def test_writer_round_trip_and_refusals(tmp_path):
    obj = {"a": [1, 2.5, None, True, (3, "x")], "big": 2 ** 40, "neg": -5,
           "scalar": np.float32(3.0), "mask": np.array([True, False]),
           "strided": np.arange(6).reshape(2, 3)[:, ::2], "empty": np.zeros((0, 3), np.float16),
           "nested": collections.OrderedDict(w=np.ones((2, 2), np.float32))}
    back = torch_pickle.load(torch_save.save(obj, tmp_path / "misc.pt"))
    assert back["a"] == obj["a"] and back["big"] == 2 ** 40 and back["neg"] == -5
    for k in ("scalar", "mask", "strided", "empty"):
        np.testing.assert_array_equal(back[k], obj[k])
        assert np.asarray(back[k]).dtype == np.asarray(obj[k]).dtype
    assert isinstance(back["nested"], collections.OrderedDict)
    with pytest.raises(TypeError, match=r"obj\['bad'\]: cannot write a object"):
        torch_save.save({"bad": object()}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def _torch_python():
    candidates = [os.environ.get("MATPAC_TORCH_PYTHON"),
                  os.path.expanduser("~/.cache/matpac_jax/torch-venv/bin/python")]
    for python in filter(None, candidates):
        if os.path.exists(python) and subprocess.run(
                [python, "-c", "import torch"], capture_output=True).returncode == 0:
            return python
    return None


def test_torch_loads_every_export_weights_only(exported, tmp_path):
    """PyTorch itself reads the files with weights_only=True (skips without torch)."""
    python = _torch_python()
    if python is None:
        pytest.skip("no Python with torch (set MATPAC_TORCH_PYTHON or create "
                    "~/.cache/matpac_jax/torch-venv)")
    paths = [done.path for _, done in exported.values()]
    for i, path in enumerate(paths):
        np.savez(tmp_path / f"{i}.npz", **{k: v for k, v in _model(torch_pickle.load(path)).items()})
    script = (
        "import sys, numpy as np, torch\n"
        "for i, path in enumerate(sys.argv[2:]):\n"
        "    obj = torch.load(path, weights_only=True, mmap=True)\n"
        "    sd = obj['model'] if 'model' in obj else obj\n"
        "    ref = np.load(f'{sys.argv[1]}/{i}.npz')\n"
        "    assert sorted(sd) == sorted(ref.files), path\n"
        "    for k, v in sd.items():\n"
        "        assert np.array_equal(v.numpy(), ref[k]), (path, k)\n"
        "print('ok', len(sys.argv) - 2)\n")
    done = subprocess.run([python, "-c", script, str(tmp_path), *paths], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ok {len(paths)}"


def test_official_inference_paths_embed_the_exports_as_we_do(exported, tmp_path):
    """What a PyTorch user gets: M2D's portable runtime and BEATs' extract_features
    (restated in benchmarks/torch_reference.py) on the exported files."""
    python = _torch_python()
    if python is None or subprocess.run([python, "-c", "import nnAudio"],
                                        capture_output=True).returncode:
        pytest.skip("no Python with torch and nnAudio (python benchmarks/compare_torch.py "
                    "--mode=embed sets one up)")
    rng = np.random.default_rng(3)
    waves = (0.1 * rng.standard_normal((2, 40000))).astype(np.float32)
    np.save(tmp_path / "waves.npy", waves)
    files = {"m2d": exported["m2d_checkpoint-300.pth"][1].path,
             "beats": exported["BEATs_small.pt"][1].path}
    script = (
        "import sys, numpy as np, torch\n"
        f"sys.path.insert(0, {str(pathlib.Path(__file__).parents[1] / 'benchmarks')!r})\n"
        "import torch_reference as ref\n"
        "waves = torch.from_numpy(np.load(sys.argv[1]))\n"
        "for name, path, out in zip(sys.argv[2::3], sys.argv[3::3], sys.argv[4::3]):\n"
        "    ckpt = torch.load(path, weights_only=True)\n"
        "    if name == 'm2d':  # M2D's get_backbone: checkpoint['model'] if 'model' in it\n"
        "        scene = ref.m2d_scene_embeddings(ckpt['model'])\n"
        "    else:\n"
        "        scene = ref.beats_scene_embeddings(ckpt)\n"
        "    with torch.inference_mode():\n"
        "        np.save(out, scene(waves).numpy())\n")
    args = [a for name, path in files.items() for a in (name, path, str(tmp_path / name))]
    done = subprocess.run([python, "-c", script, str(tmp_path / "waves.npy"), *args],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, path in files.items():
        theirs = np.load(tmp_path / f"{name}.npy")
        ours = matpac_jax.load(path).clip_embeddings(list(waves))
        assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max(), name
