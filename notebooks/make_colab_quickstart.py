"""Writes notebooks/colab_quickstart.ipynb (edit the cells here, then re-run).

  python notebooks/make_colab_quickstart.py

Cells tagged `skip-in-tests` (installs, uploads) are skipped by
tests/test_notebook.py, which runs the rest on CPU with a fixture checkpoint.
"""
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SKIP = {"tags": ["skip-in-tests"]}

CELLS = [
    new_markdown_cell("""\
# matpac_jax quickstart

Load a checkpoint (an official MATPAC / M2D / BEATs `.pt` file, or the workdir
of a `python -m matpac_jax.main` run), embed a clip, look at its log-mel and
frame features, and run a tiny linear probe. Runs on the Colab CPU; a GPU/TPU
runtime only makes it faster."""),
    new_code_cell("""\
# Install. In Colab: from GitHub (replace the URL with this repository's).
# From a clone: run `pip install -e .[plot]` in the repository root instead.
!pip install -q "matpac_jax[plot] @ git+https://github.com/YOUR_ORG/matpac_jax.git\"""",
                  metadata=SKIP),
    new_markdown_cell("""\
## Checkpoint

Set `CHECKPOINT` to a file or a training workdir (or the `MATPAC_CHECKPOINT`
environment variable). Official files: MATPAC and M2D weights from their
GitHub releases (`.pth`), BEATs `BEATs_iter3.pt`; upload them to the session
or mount Drive."""),
    new_code_cell("""\
import os

import matplotlib.pyplot as plt
import numpy as np

import matpac_jax
from matpac_jax.data import audio, frontends, toy_sounds

CHECKPOINT = os.environ.get("MATPAC_CHECKPOINT", "/content/matpac_checkpoint.pth")
if not os.path.exists(CHECKPOINT):
    raise FileNotFoundError(f"{CHECKPOINT}: upload a checkpoint or point CHECKPOINT at one")
embedder = matpac_jax.load(CHECKPOINT)
print(embedder.method, "front end:", embedder.frontend)"""),
    new_markdown_cell("## A clip: upload one, or use a synthetic toy sound"),
    new_code_cell("""\
wave, name = None, None
try:
    from google.colab import files  # only in Colab

    uploaded = files.upload()
    if uploaded:
        name = next(iter(uploaded))
        wave = audio.load_audio(name)  # any format soundfile/librosa reads, resampled to 16 kHz
except ImportError:
    pass
if wave is None:
    name = "toy: chord"
    wave = toy_sounds.synthesize("chord", np.random.default_rng(0), seconds=4.0)
print(name, f"{len(wave) / 16000:.2f} s")"""),
    new_code_cell("""\
feat = embedder.features(wave)  # normalised log-mel (80, T) or BEATs fbank (T, 128)
mel = feat.T if frontends.FEATURE_LAYOUT[embedder.frontend] == "time_freq" else feat
plt.figure(figsize=(10, 3))
plt.imshow(mel, origin="lower", aspect="auto", cmap="magma",
           extent=(0, mel.shape[1] / 100, 0, mel.shape[0]))
plt.xlabel("time (s)"); plt.ylabel("mel bin"); plt.title(f"log-mel: {name}"); plt.colorbar()
plt.show()"""),
    new_markdown_cell("""\
## Embeddings

Frame features every 160 ms (M2D/MATPAC: the 5 frequency tokens
concatenated, 3840-d for ViT-B); the clip embedding is their mean over time."""),
    new_code_cell("""\
frames, times = embedder.frame_embeddings(wave)
clip = embedder.clip_embeddings([wave])[0]
print("frames", frames.shape, "clip", clip.shape)

z = (frames - frames.mean(0)) / (frames.std(0) + 1e-6)
fig, (a, b) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
a.imshow(z.T[:256], origin="lower", aspect="auto", cmap="coolwarm", vmin=-3, vmax=3,
         extent=(times[0], times[-1] + embedder.step_seconds, 0, min(256, z.shape[1])))
a.set_ylabel("feature (first 256)"); a.set_title("frame features, standardised over time")
b.plot(times, np.linalg.norm(frames, axis=1)); b.set_xlabel("time (s)"); b.set_ylabel("L2 norm")
plt.show()"""),
    new_markdown_cell("""\
## A tiny linear probe

Four procedural sound classes, 16 clips each (12 train, 4 test), probed as
`python -m matpac_jax.evaluate` probes any folder with a `meta.csv` of
`file,label,split` (EVAR's linear probe, the learning rate picked on valid
from 3e-5 to 1e-3). The papers' datasets as released run EVAR's protocol:
`--task=esc50:PATH`, or `--suite=evar --data_root=DIR` (README)."""),
    new_code_cell("""\
import csv
import tempfile

import soundfile as sf

from matpac_jax import evaluate

task = os.path.join(tempfile.mkdtemp(), "demo_task")
os.makedirs(os.path.join(task, "audio"))
rows = []
for label in ("harmonic", "chirp", "noise_burst", "clicks"):
    for i in range(16):
        rel = f"audio/{label}_{i:02d}.wav"
        sf.write(os.path.join(task, rel), toy_sounds.synthesize(label, np.random.default_rng([i, 7]), 1.5), 16000)
        rows.append({"file": rel, "label": label, "split": "train" if i < 12 else "test"})
with open(os.path.join(task, "meta.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, ["file", "label", "split"])
    w.writeheader()
    w.writerows(rows)

evaluate.main(["--checkpoint", CHECKPOINT, "--task", task, "--out", os.path.join(task, "probe.json"),
               "--cache_dir", os.path.join(task, "cache")])"""),
]


def main() -> None:
    nb = new_notebook(cells=CELLS, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    })
    nbformat.validate(nb)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "colab_quickstart.ipynb")
    nbformat.write(nb, path)
    print(path)


if __name__ == "__main__":
    main()
