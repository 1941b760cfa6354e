"""`python -m matpac_jax.tokenize` on wav files."""
import numpy as np
import soundfile as sf

from matpac_jax import tokenize


def test_tokenize_cli_two_wavs(tmp_path, fixtures_dir, capsys):
    ref = np.load(fixtures_dir / "beats_tokenizer_ref.npz")
    wave = ref["waveform"]
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, wave[0], 16000, subtype="FLOAT")
    sf.write(b, wave[1, :8000], 16000, subtype="FLOAT")  # 0.5 s: 48 frames -> 3 x 8 patches
    out = tmp_path / "labels.npz"
    assert tokenize.main(["--checkpoint", str(fixtures_dir / "Tokenizer_small.pt"),
                          "--out", str(out), str(a), str(b)]) == 0
    assert "2 files, 120 labels" in capsys.readouterr().out
    got = np.load(out)
    np.testing.assert_array_equal(got["lengths"], [96, 24])
    assert got["labels"].dtype == np.int32 and got["labels"].shape == (120,)
    # project front end vs torchaudio's: labels agree (exactly, at the time of writing)
    assert np.mean(got["labels"][:96] == ref["labels"][:96]) >= 0.95
    assert list(got["files"]) == [str(a), str(b)]


def test_tokenize_cli_rejects_encoder_checkpoint(tmp_path, fixtures_dir):
    a = tmp_path / "a.wav"
    sf.write(a, np.zeros(4000, np.float32), 16000)
    assert tokenize.main(["--checkpoint", str(fixtures_dir / "BEATs_small.pt"),
                          "--out", str(tmp_path / "x.npz"), str(a)]) == 2
