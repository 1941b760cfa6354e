"""The Debian-packaged material the demo corpus is rendered from, and its checks.

`find_sources()` locates and validates everything before any work starts and
raises ONE `DemoSourceError` naming every missing or corrupt source with the
apt-get command that installs it. Overrides (all optional):

  MATPAC_DEMO_SOUNDFONTS  folders (os.pathsep-separated) searched for the
                          soundfont files, default /usr/share/sounds/sf2:sf3
  MATPAC_DEMO_BIN_PATH    folders searched for fluidsynth, flite, festival,
                          default $PATH
  MATPAC_DEMO_WORDS       the word list, default /usr/share/dict/words

Deliberately never used: the TimGM6mb soundfont and espeak-ng (the evaluation
sets were rendered with them; docs/DEMO_DATA.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import struct
import subprocess

from matpac_jax import errors

DEFAULT_SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3")
DEFAULT_WORDS = "/usr/share/dict/words"
FESTIVAL_VOICE_DIR = "/usr/share/festival/voices"

# name -> (file names accepted, in order of preference; Debian package).
SOUNDFONTS = {
    "fluidr3": (("FluidR3_GM.sf2",), "fluid-soundfont-gm"),
    "musescore": (("MuseScore_General_Full.sf3", "MuseScore_General.sf3"),
                  "musescore-general-soundfont"),
}
PROGRAMS = {"fluidsynth": "fluidsynth", "flite": "flite", "festival": "festival"}
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")  # built into Debian's flite
# festival voice -> (folder under FESTIVAL_VOICE_DIR, package).
FESTIVAL_VOICES = {
    "kal_diphone": ("english/kal_diphone", "festvox-kallpc16k"),
    "ked_diphone": ("english/ked_diphone", "festvox-kdlpc16k"),
    "cmu_us_slt_arctic_hts": ("us/cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),
}
WORDS_PACKAGE = "wamerican"
ALL_PACKAGES = (
    "fluidsynth", "fluid-soundfont-gm", "musescore-general-soundfont", "flite", "festival",
    "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts", "wamerican",
)
EXCLUDED = re.compile(r"timgm|espeak", re.IGNORECASE)
MIN_WORDS = 1000


class DemoSourceError(errors.DataError, RuntimeError):
    """Sources of the demo corpus are missing or corrupt (one message for all)."""

    def __init__(self, problems: list[str], packages: list[str]):
        order = {p: i for i, p in enumerate(ALL_PACKAGES)}
        self.problems = list(problems)
        self.packages = sorted(dict.fromkeys(packages), key=lambda p: order.get(p, len(order)))
        sudo = "" if os.geteuid() == 0 else "sudo "
        install = (f"bash launch/demo_packages.sh (from the repository), or {sudo}apt-get "
                   "install -y " + " ".join(self.packages))
        if any("corrupt" in p or "unusable" in p for p in problems):
            install = f"{sudo}apt-get install -y --reinstall " + " ".join(self.packages)
        super().__init__(
            "The demo pre-training corpus (matpac_jax.data.demo) is rendered from Debian "
            "packages, and these sources are missing or unusable: "
            + "; ".join(self.problems)
            + f". Install them with: {install} (or point MATPAC_DEMO_SOUNDFONTS, "
            "MATPAC_DEMO_BIN_PATH or MATPAC_DEMO_WORDS at working copies); nothing was "
            "generated. See docs/DEMO_DATA.md."
        )


@dataclasses.dataclass(frozen=True)
class Soundfont:
    name: str  # "fluidr3" / "musescore"
    path: str
    title: str  # INFO/INAM
    size: int
    melodic: tuple[int, ...]  # bank-0 programs present
    kits: tuple[int, ...]  # bank-128 (drum kit) programs present


@dataclasses.dataclass(frozen=True)
class Sources:
    soundfonts: tuple[Soundfont, ...]
    programs: dict  # name -> absolute path
    flite_voices: tuple[str, ...]
    festival_voices: tuple[str, ...]
    words: tuple[str, ...]

    def fingerprint(self) -> str:
        """Changes when a source file changes (part of the cache key)."""
        h = hashlib.sha256()
        for sf in self.soundfonts:
            h.update(f"{sf.name}:{os.path.basename(sf.path)}:{sf.size}\0".encode())
        h.update(" ".join(self.flite_voices + self.festival_voices).encode())
        h.update(f"\0{len(self.words)}:{hash_words(self.words)}".encode())
        return h.hexdigest()[:10]


def hash_words(words) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()[:10]


class CorruptSoundfont(ValueError):
    pass


def read_soundfont(path: str) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """(INAM title, bank-0 programs, bank-128 kits) of a SoundFont 2/3 file.

    Walks the RIFF chunks (seeking over the sample data), so a truncated or
    damaged file raises `CorruptSoundfont` quickly without loading samples.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise CorruptSoundfont("not a RIFF sfbk (SoundFont) file")
        riff_size = struct.unpack("<I", head[4:8])[0]
        if riff_size + 8 > size:
            raise CorruptSoundfont(
                f"truncated: its header says {riff_size + 8} bytes, the file has {size}"
            )
        title, phdr, sample_bytes = "", None, 0
        pos = 12
        while pos + 8 <= riff_size + 8:
            f.seek(pos)
            cid, csize = struct.unpack("<4sI", f.read(8))
            if cid != b"LIST":
                pos += 8 + csize + (csize & 1)
                continue
            kind = f.read(4)
            sub, end = pos + 12, pos + 8 + csize
            if end > size:
                raise CorruptSoundfont(f"truncated inside the {kind.decode('latin1')} list")
            while sub + 8 <= end:
                f.seek(sub)
                sid, ssize = struct.unpack("<4sI", f.read(8))
                if sub + 8 + ssize > end:
                    raise CorruptSoundfont(f"chunk {sid!r} runs past its list")
                if kind == b"INFO" and sid == b"INAM":
                    title = f.read(min(ssize, 256)).split(b"\0")[0].decode("latin1", "replace")
                elif kind == b"sdta" and sid == b"smpl":
                    sample_bytes = ssize
                elif kind == b"pdta" and sid == b"phdr":
                    phdr = f.read(ssize)
                sub += 8 + ssize + (ssize & 1)
            pos = end + (csize & 1)
    if not sample_bytes:
        raise CorruptSoundfont("no sample data (sdta/smpl)")
    if not phdr or len(phdr) % 38 or len(phdr) < 76:
        raise CorruptSoundfont("no preset table (pdta/phdr)")
    melodic, kits = set(), set()
    for i in range(len(phdr) // 38 - 1):  # The last record is the EOP terminator.
        preset, bank = struct.unpack("<HH", phdr[i * 38 + 20 : i * 38 + 24])
        if bank == 0 and preset < 128:
            melodic.add(preset)
        elif bank == 128 and preset < 128:
            kits.add(preset)
    if len(melodic) < 64 or not kits:
        raise CorruptSoundfont(
            f"only {len(melodic)} General MIDI programs and {len(kits)} drum kits"
        )
    return title, tuple(sorted(melodic)), tuple(sorted(kits))


def _search_path(env: str, default) -> list[str]:
    value = os.environ.get(env)
    if value is None:
        return list(default)
    return [d for d in value.split(os.pathsep) if d]


def read_words(path: str) -> tuple[str, ...]:
    """Lower-case plain words (2-12 letters, no names or possessives) of a word list."""
    with open(path, encoding="utf-8", errors="replace") as f:
        words = {w.strip() for w in f}
    keep = re.compile(r"^[a-z]{2,12}$")
    return tuple(sorted(w for w in words if keep.match(w)))


def find_sources() -> Sources:
    """Locates and checks every source; raises one `DemoSourceError` listing all problems."""
    problems, packages = [], []
    sf_dirs = _search_path("MATPAC_DEMO_SOUNDFONTS", DEFAULT_SOUNDFONT_DIRS)
    soundfonts = []
    for name, (files, package) in SOUNDFONTS.items():
        path = next(
            (os.path.join(d, f) for f in files for d in sf_dirs
             if os.path.isfile(os.path.join(d, f))),
            None,
        )
        if path is None:
            problems.append(f"soundfont {files[0]} (package {package}) not found in "
                            f"{os.pathsep.join(sf_dirs) or '(empty search path)'}")
            packages.append(package)
            continue
        real = os.path.realpath(path)
        try:
            title, melodic, kits = read_soundfont(real)
        except (CorruptSoundfont, OSError, struct.error) as err:
            problems.append(f"soundfont {path} (package {package}) is corrupt or unreadable: {err}")
            packages.append(package)
            continue
        if EXCLUDED.search(real) or EXCLUDED.search(title):
            problems.append(f"soundfont {path} is {title or real}, which is excluded "
                            "(the evaluation sets were rendered with it)")
            packages.append(package)
            continue
        soundfonts.append(Soundfont(name, real, title, os.path.getsize(real), melodic, kits))

    bin_path = os.environ.get("MATPAC_DEMO_BIN_PATH", os.environ.get("PATH", os.defpath))
    where = "MATPAC_DEMO_BIN_PATH" if "MATPAC_DEMO_BIN_PATH" in os.environ else "PATH"
    programs = {}
    for prog, package in PROGRAMS.items():
        found = shutil.which(prog, path=bin_path)
        if found is None:
            problems.append(f"program '{prog}' (package {package}) not on "
                            f"{where}")
            packages.append(package)
        else:
            programs[prog] = found

    flite_voices = ()
    if "flite" in programs:
        try:
            out = subprocess.run([programs["flite"], "-lv"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
            have = set(out.replace("Voices available:", " ").split())
        except (OSError, subprocess.SubprocessError) as err:
            have = set()
            problems.append(f"program {programs['flite']} (package flite) is unusable: {err}")
            packages.append("flite")
        missing = [v for v in FLITE_VOICES if v not in have]
        if missing and have:
            problems.append(f"flite voices {', '.join(missing)} (package flite) are missing")
            packages.append("flite")
        flite_voices = tuple(v for v in FLITE_VOICES if v in have)

    festival_voices = []
    if "festival" in programs:
        for voice, (folder, package) in FESTIVAL_VOICES.items():
            if os.path.isdir(os.path.join(FESTIVAL_VOICE_DIR, folder)):
                festival_voices.append(voice)
            else:
                problems.append(f"festival voice {voice} (package {package}) not found in "
                                f"{FESTIVAL_VOICE_DIR}")
                packages.append(package)

    words_path = os.environ.get("MATPAC_DEMO_WORDS", DEFAULT_WORDS)
    words = ()
    if not os.path.isfile(words_path):
        problems.append(f"word list {words_path} (package {WORDS_PACKAGE}) not found")
        packages.append(WORDS_PACKAGE)
    else:
        try:
            words = read_words(words_path)
        except OSError as err:
            problems.append(f"word list {words_path} (package {WORDS_PACKAGE}) is unusable: {err}")
            packages.append(WORDS_PACKAGE)
        else:
            if len(words) < MIN_WORDS:
                problems.append(f"word list {words_path} (package {WORDS_PACKAGE}) is corrupt: "
                                f"{len(words)} usable words (< {MIN_WORDS})")
                packages.append(WORDS_PACKAGE)

    if problems:
        raise DemoSourceError(problems, packages)
    return Sources(tuple(soundfonts), programs, flite_voices, tuple(festival_voices), words)
