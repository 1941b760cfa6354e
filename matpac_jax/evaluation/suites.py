"""The papers' task sets (`--suite`), where their release folders are, and the published numbers.

`--suite=evar`: the nine tasks of EVAR's table (M2D's paper);
`--suite=matpac`: the seven of the MATPAC papers. Under `--data_root=DIR`
each task is looked up under the folder names in `FOLDERS` (the task's own
name first, then its release's usual folder name); absent tasks are listed
and skipped.

Published numbers (percent), with their sources:
- EVAR: nttcslab/eval-audio-repr README, section 7-2 (commit 88ba772), M2D row
  (the M2D ViT-B checkpoint 80x608p16x16-221006-mr7).
- MATPAC: aurianworld/matpac README, assets/table_results.png (commit
  b0e2dc7; Table 1 of the MATPAC++ paper, arXiv 2508.12709): M2D, MATPAC and
  MATPAC++ rows (95 % confidence intervals omitted).
"""
from __future__ import annotations

from matpac_jax import storage

SUITES = {
    "evar": ["esc50", "us8k", "spcv2", "vc1", "voxforge", "cremad", "gtzan", "nsynth", "surge"],
    "matpac": ["openmic", "nsynth", "gtzan", "mtt", "fsd50k", "esc50", "us8k"],
}
FOLDERS = {
    "esc50": ["esc50", "ESC-50-master", "ESC-50"],
    "us8k": ["us8k", "UrbanSound8K"],
    "spcv2": ["spcv2", "speech_commands_v0.02"],
    "vc1": ["vc1", "VoxCeleb1", "voxceleb1"],
    "voxforge": ["voxforge"],
    "cremad": ["cremad", "CREMA-D"],
    "gtzan": ["gtzan", "GTZAN", "genres"],
    "nsynth": ["nsynth"],
    "surge": ["surge"],
    "fsd50k": ["fsd50k", "FSD50K"],
    "openmic": ["openmic", "openmic-2018"],
    "mtt": ["mtt", "MagnaTagATune", "magnatagatune"],
    "as20k": ["as20k", "AudioSet", "audioset"],
}
# VoxForge has no release of its own: EVAR builds it from TFDS's download
# (evar/utils/download_voxforge.py) and ships its metadata, evar/metadata/voxforge.csv.
VOXFORGE = "voxforge.csv"

SOURCES = {
    "evar": "nttcslab/eval-audio-repr README, section 7-2, commit 88ba772",
    "matpac": "aurianworld/matpac README, assets/table_results.png, commit b0e2dc7 "
              "(MATPAC++ paper, arXiv 2508.12709, Table 1)",
}
PUBLISHED = {
    "evar": {"M2D": {"esc50": 91.3, "us8k": 87.6, "spcv2": 96.0, "vc1": 73.4,
                     "voxforge": 98.3, "cremad": 73.0, "gtzan": 84.1, "nsynth": 75.7,
                     "surge": 42.1}},
    "matpac": {
        "M2D": {"openmic": 84.8, "nsynth": 76.2, "gtzan": 84.3, "mtt": 40.6, "fsd50k": 53.4,
                "esc50": 92.1, "us8k": 88.5},
        "MATPAC": {"openmic": 85.5, "nsynth": 76.2, "gtzan": 85.5, "mtt": 41.1,
                   "fsd50k": 55.6, "esc50": 93.0, "us8k": 89.7},
        "MATPAC++": {"openmic": 85.6, "nsynth": 76.8, "gtzan": 87.6, "mtt": 40.8,
                     "fsd50k": 56.1, "esc50": 93.1, "us8k": 89.7},
    },
}


def resolve(suite: str, data_root: str) -> tuple[list[str], list[str]]:
    """(`--task` specs of the tasks found under `data_root`, one line per absent task)."""
    found, absent = [], []
    for name in SUITES[suite]:
        folders = [storage.join(data_root, f) for f in FOLDERS[name]]
        here = next((f for f in folders if storage.isdir(f)), None)
        if here is None:
            absent.append(f"{name}: not found under {storage.display(data_root)} "
                          f"(looked for {', '.join(FOLDERS[name])})")
        elif name == "voxforge":
            meta = storage.join(here, VOXFORGE)
            if storage.isfile(meta):
                found.append(f"evar:{meta}@{here}")
            else:
                absent.append(f"voxforge: {storage.display(here)} has no {VOXFORGE} (EVAR's "
                              "evar/metadata/voxforge.csv, with the audio it names)")
        else:
            found.append(f"{name}:{here}")
    return found, absent


def table(results: dict, suite: str | None, absent: list[str] = ()) -> str:
    """Markdown: ours (percent, mean ± std over seeds) beside the published
    numbers of `suite` (all of them when None), and ours minus each."""
    suites = [suite] if suite else list(PUBLISHED)
    columns = [(s, model) for s in suites for model in PUBLISHED[s]]
    if suite is None:  # only the columns that speak of these tasks
        columns = [(s, m) for s, m in columns if any(t in PUBLISHED[s][m] for t in results)]
    head = ["task", "metric", "ours"] + [h for s, m in columns for h in
                                         (f"{m} [{s}]", "ours - pub.")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        ours = 100 * r["mean"]
        row = [name, r["metric"], f"{ours:.1f} ± {100 * r['std']:.1f}"]
        for s, m in columns:
            pub = PUBLISHED[s][m].get(name)
            row += ["—", "—"] if pub is None else [f"{pub:.1f}", f"{ours - pub:+.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    notes = [f"[{s}]: {SOURCES[s]}." for s in dict.fromkeys(s for s, _ in columns)]
    notes += [f"Not run: {a}." for a in absent]
    protocols = {r["protocol"]["name"] for r in results.values()}
    notes.append("Ours: this run's protocol per task is in the JSON (`protocol`); "
                 f"protocols used: {', '.join(sorted(protocols))}. The published numbers are "
                 "ViT-B checkpoints on the full datasets.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
