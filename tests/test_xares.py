"""X-ARES encoder files (matpac_jax.xares): the command and BEATs' chunking without torch; with
torch, the contract X-ARES's loader and checker hold a file to (benchmarks/xares_check.sh runs
these and the installed xares's own checker in a venv with torch)."""
import ast
import dataclasses
import importlib
import subprocess
import sys

import numpy as np
import pytest

from matpac_jax import errors, inference
from matpac_jax import xares as matpac_xares


def _noise(n, samples, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, samples)).astype(np.float32)


def _top_level_names(source: str) -> list[str]:
    """What `dir(module)` lists of a file's own bindings (imports, classes, assignments)."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [a.asname or a.name.split(".")[0] for a in node.names]
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return names


def test_beats_chunk_frames_encodes_each_piece_alone(fixtures_dir):
    whole = inference.load(str(fixtures_dir / "BEATs_small.pt"))
    chunked = dataclasses.replace(whole, chunk_frames=32)
    wave = _noise(1, 400 + 115 * 160)[0]  # 116 fbank frames: 112 used, 3 chunks of 32 and 16
    feats = whole.features(wave)
    pieces = [whole.frames_of_features([feats[c:c + 32]])[0] for c in range(0, 112, 32)]
    got = chunked.frames([wave])[0]
    assert got.shape[0] == 7
    np.testing.assert_allclose(got, np.concatenate(pieces), atol=1e-5)
    # whole-clip attention spans the chunks, so the default differs
    assert not np.allclose(whole.frames([wave])[0], got, atol=1e-3)
    with pytest.raises(ValueError, match="positive multiple of 16 fbank frames, got 20"):
        dataclasses.replace(whole, chunk_frames=20)


@pytest.mark.slow
def test_command_writes_one_encoder_class_bound_to_the_checkpoint(fixtures_dir, tmp_path):
    ckpt = fixtures_dir / "BEATs_small.pt"
    out = tmp_path / "beats_encoder.py"
    run = subprocess.run([sys.executable, "-m", "matpac_jax.xares", f"--checkpoint={ckpt}",
                          f"--out={out}", "--frame_hop_ms=40"],
                         capture_output=True, text=True, check=True)
    assert "class BEATs_small_hop40Encoder" in run.stderr
    source = out.read_text()
    names = _top_level_names(source)
    assert [n for n in names if n.endswith("Encoder")] == ["BEATs_small_hop40Encoder"], names
    assert f"checkpoint = {str(ckpt)!r}" in source and "frame_hop_ms = 40" in source
    assert "python -m xares.run --max-jobs 8 beats_encoder.py src/tasks/*.py" in source


def test_command_refuses_what_xares_cannot_load(fixtures_dir, tmp_path):
    ckpt = f"--checkpoint={fixtures_dir / 'matpac_flat.pt'}"
    cases = [([ckpt, f"--out={tmp_path / 'my-encoder.py'}"], errors.OutputError,
              "my-encoder.py: X-ARES imports the encoder file as a module"),
             ([ckpt, f"--out={tmp_path / 'enc.py'}", "--name=Matpac"], errors.ConfigError,
              "--name=Matpac: X-ARES takes the class whose name ends in 'Encoder'"),
             ([ckpt, f"--out={tmp_path / 'enc.py'}", "--frame_hop_ms=50"], errors.ConfigError,
              r"--frame_hop_ms=50: one of \(10, 20, 40, 80, 160\)"),
             ([f"--checkpoint={tmp_path / 'none.pt'}", f"--out={tmp_path / 'enc.py'}"],
              errors.CheckpointError, "none.pt: no such checkpoint file or workdir")]
    for argv, kind, message in cases:
        with pytest.raises(kind, match=message):
            matpac_xares.main(argv)
    assert not (tmp_path / "enc.py").exists()


def test_default_class_names_differ_per_checkpoint():
    assert matpac_xares.default_name("/m/matpac_10_2048.pt", 160) == "Matpac_10_2048Encoder"
    assert matpac_xares.default_name("gs://b/runs/m2d_as2m/checkpoints/300", 40) == \
        "M2d_as2m_step300_hop40Encoder"
    assert matpac_xares.default_name("/m/2048.pth", 160) != matpac_xares.default_name(
        "/m/1024.pth", 160)


# -- with torch: the file as X-ARES loads and calls it ---------------------------
@pytest.fixture(scope="module")
def encoders(fixtures_dir, tmp_path_factory):
    """X-ARES's loader restated (xares.utils.attr_from_py_path): import the file, take the one
    name ending in 'Encoder', build it with no arguments."""
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("xares_encoders")
    sys.path.insert(0, str(folder))
    built = {}
    try:
        for module, ckpt in (("m2d_encoder", "m2d_checkpoint-300.pth"),
                             ("beats_encoder", "BEATs_small.pt")):
            matpac_xares.main([f"--checkpoint={fixtures_dir / ckpt}",
                               f"--out={folder / (module + '.py')}"])
            loaded = importlib.import_module(module)
            names = [n for n in dir(loaded) if n.endswith("Encoder")]
            assert len(names) == 1, names
            built[module] = getattr(loaded, names[0])()
    finally:
        sys.path.remove(str(folder))
    return built


def test_forward_of_a_zero_padded_batch(encoders):
    import torch

    enc = encoders["m2d_encoder"]
    assert isinstance(enc, torch.nn.Module)
    assert (enc.sampling_rate, enc.hop_size_in_ms) == (16000, 160)
    audio = torch.zeros(2, 50_000)  # the checker's length; the second clip zero-padded
    audio[0] = torch.from_numpy(_noise(1, 50_000)[0])
    audio[1, :20_000] = torch.from_numpy(_noise(1, 20_000, seed=1)[0])
    y = enc(audio)
    assert y.dtype == torch.float32 and y.shape == (2, 20, enc.output_dim)  # ceil(3125 / 160)
    np.testing.assert_allclose(y.numpy(), enc.core.frames(audio.numpy())[0])
    np.testing.assert_allclose(enc(audio[1]).numpy(), y[1:].numpy(), atol=1e-5)  # [T] as [1, T]
    assert enc(torch.zeros(2, 1)).shape == (2, 1, enc.output_dim)  # any length


def test_long_input_is_chunked(encoders):
    import torch

    enc = encoders["beats_encoder"]
    first_chunk = 400 + (matpac_xares.BEATS_CHUNK_FRAMES - 1) * 160  # samples of 992 frames
    audio = torch.from_numpy(_noise(1, 25 * 16000))
    y = enc(audio)
    assert y.shape == (1, 156, enc.output_dim)  # (1 + (400000 - 400) // 160) // 16 patch rows
    # the first 10 s are encoded alone: later audio does not reach them
    np.testing.assert_allclose(y[:, :62].numpy(), enc(audio[:, :first_chunk]).numpy(),
                               atol=1e-5)


def test_xares_own_checker_passes(encoders):
    checker = pytest.importorskip("xares.audio_encoder_checker")
    for enc in encoders.values():
        assert checker.check_audio_encoder(enc)
