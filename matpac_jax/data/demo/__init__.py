"""The demo pre-training corpus, rendered on first use from Debian-packaged sources.

About 2000 clips (`DEFAULT_NUM_CLIPS`) of 6.5-10 s, 16 kHz mono: music
(random GM arrangements played by fluidsynth from the FluidR3 GM and MuseScore
General soundfonts), drums (GM drum kits), speech (flite and festival voices
reading random sentences of a generic English word list), mixtures of these
and noise beds at random levels, and noise (coloured noise, GM sound effects).
Labels (meta.csv) are the coarse kinds: music, drums, speech, mixture, noise.
Nothing is tuned toward any evaluation task; docs/DEMO_DATA.md has the sources,
what is excluded and why, timings and the cache.

  python -m matpac_jax.data.demo --output=DIR --frontend=matpac [--num_clips=N]

The rendered audio is cached per user (MATPAC_JAX_CACHE, default
~/.cache/matpac_jax; `MATPAC_JAX_CACHE=off` renders into the output folder).
The procedural toy sounds that used to be the demo data are in
`matpac_jax.data.toy_sounds`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

from absl import flags

from matpac_jax import cli, storage
from matpac_jax.data import prepare
from matpac_jax.data.demo.corpus import KINDS, VERSION, cache_root, cached_corpus, write_corpus
from matpac_jax.data.demo.sources import DemoSourceError, find_sources
from matpac_jax.data.frontends import SR

log = logging.getLogger(__name__)

DEFAULT_NUM_CLIPS = 2000

__all__ = [
    "DEFAULT_NUM_CLIPS", "DemoSourceError", "KINDS", "SR", "VERSION", "cache_root",
    "ensure_demo_shards", "find_sources", "main", "shards_for_run", "write_demo_audio",
]


def write_demo_audio(directory: str, num_clips: int = DEFAULT_NUM_CLIPS, seed: int = 0) -> str:
    """Renders `num_clips` clips into `directory` (audio/*.flac, meta.csv with
    columns file,label, clips.json with every clip's recipe, corpus.json with
    counts and timings); returns the meta.csv path. Not cached. Raises
    `DemoSourceError` before any work when a source package is missing."""
    return write_corpus(directory, num_clips, seed)


def _read_tag(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _clear_audio(directory: str) -> None:
    """Removes directory/audio: a link to a cached corpus, or older demo audio."""
    link = os.path.join(directory, "audio")
    if os.path.islink(link):
        os.unlink(link)
    elif os.path.isdir(link):
        shutil.rmtree(link)


def _link_corpus(directory: str, corpus: str) -> str:
    """directory/audio -> corpus/audio (a symlink) and a copy of its meta.csv;
    returns the CSV that `prepare` should read."""
    link, target = os.path.join(directory, "audio"), os.path.join(corpus, "audio")
    _clear_audio(directory)
    try:
        os.symlink(target, link, target_is_directory=True)
    except OSError:  # No symlinks here: read the cache's CSV directly.
        return os.path.join(corpus, "meta.csv")
    for name in ("meta.csv", "clips.json", "corpus.json"):
        shutil.copyfile(os.path.join(corpus, name), os.path.join(directory, name))
    return os.path.join(directory, "meta.csv")


def ensure_demo_shards(directory: str, frontend: str, num_clips: int = DEFAULT_NUM_CLIPS,
                       seed: int = 0) -> str:
    """Shards of the demo corpus under `directory` (made once, then reused); returns the shard dir.

    `directory/demo.json` records num_clips, seed and the generator version;
    other values regenerate. The audio comes from the user cache (rendered
    there on first use, ~3 min for the default corpus on 2 cores) unless
    MATPAC_JAX_CACHE=off, when it is rendered into `directory`.
    """
    shard_dir = os.path.join(directory, f"shards_{frontend}")
    manifest = os.path.join(shard_dir, "manifest.json")
    tag = {"num_clips": num_clips, "seed": seed, "version": VERSION}
    tag_path = os.path.join(directory, "demo.json")
    same = _read_tag(tag_path) == tag
    if same and os.path.exists(manifest):
        return shard_dir
    csv_path = os.path.join(directory, "meta.csv")
    if not (same and os.path.exists(csv_path)):
        src = find_sources()  # One clear error before any work.
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(tag_path):
            os.remove(tag_path)
        corpus = cached_corpus(num_clips, seed, src)
        if corpus is None:
            _clear_audio(directory)
            write_corpus(directory, num_clips, seed, src)
        else:
            csv_path = _link_corpus(directory, corpus)
        for name in os.listdir(directory):  # Shards of other demo audio: start over.
            if name.startswith("shards_") and os.path.isdir(os.path.join(directory, name)):
                shutil.rmtree(os.path.join(directory, name))
        with open(tag_path, "w", encoding="utf-8") as f:
            json.dump(tag, f)
    num_shards = max(1, num_clips // 256)
    if num_shards == 1:
        prepare.prepare(csv_path, shard_dir, frontend, num_shards=1)
    else:  # Two processes, started from a fresh interpreter: prepare's `spawn`
        # pool re-imports __main__, which must not be a caller's unguarded script.
        cmd = [sys.executable, "-m", "matpac_jax.data.prepare", "--input", csv_path,
               "--output", shard_dir, "--frontend", frontend, "--num_shards", str(num_shards),
               "--workers", "2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"preparing the demo shards failed: {' '.join(cmd)}\n"
                               f"{proc.stderr[-2000:]}")
    return shard_dir


def shards_for_run(workdir: str, frontend: str, num_clips: int = DEFAULT_NUM_CLIPS) -> str:
    """The shards a `data.path='demo'` run trains on (made once, then reused):
    WORKDIR/demo_data for a local workdir; for a gs:// one a local folder
    beside the corpus cache (the corpus is rendered on this machine; a cloud
    run should prepare its data into the bucket instead)."""
    if storage.is_remote(workdir):
        root = os.path.dirname(cache_root() or os.path.join(tempfile.gettempdir(), "matpac_jax",
                                                            "demo_corpus"))
        directory = os.path.join(root, "demo_data")
    else:
        directory = os.path.join(workdir, "demo_data")
    return ensure_demo_shards(directory, frontend, num_clips=num_clips)


FLAGS = flags.FlagValues()
flags.DEFINE_string("output", None, "folder of the shards (and demo.json)", flag_values=FLAGS,
                    required=True)
flags.DEFINE_enum("frontend", "matpac", ["matpac", "m2d", "beats"], "front end of the shards",
                  flag_values=FLAGS)
flags.DEFINE_integer("num_clips", DEFAULT_NUM_CLIPS, "clips in the corpus", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "seed of the corpus", flag_values=FLAGS)
flags.DEFINE_bool("audio_only", False, "only render the audio into --output (no cache, no "
                  "shards)", flag_values=FLAGS)


def main(argv=None) -> int:
    cli.parse(FLAGS, argv, "python -m matpac_jax.data.demo", __doc__)
    args = FLAGS
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.audio_only:
            print(write_demo_audio(args.output, args.num_clips, args.seed))
        else:
            print(ensure_demo_shards(args.output, args.frontend, args.num_clips, args.seed))
    except DemoSourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
