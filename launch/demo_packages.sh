#!/usr/bin/env bash
# Installs the Debian packages the demo corpus is rendered from
# (docs/DEMO_DATA.md), only those missing; does nothing when all are there.
# Works as root (containers, Colab, CI) or as a user with sudo. About 200 MB
# of packages, 1-3 minutes on a fresh machine (apt-get update included).
#
#   bash launch/demo_packages.sh            # install what is missing
#   bash launch/demo_packages.sh --dry-run  # print what it would run
#
# README's first command and .ci/run both call it.
set -euo pipefail
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1

need=()
command -v fluidsynth >/dev/null || need+=(fluidsynth)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need+=(fluid-soundfont-gm)
[ -f /usr/share/sounds/sf3/MuseScore_General_Full.sf3 ] \
  || [ -f /usr/share/sounds/sf3/MuseScore_General.sf3 ] || need+=(musescore-general-soundfont)
command -v flite >/dev/null || need+=(flite)
command -v festival >/dev/null || need+=(festival)
[ -d /usr/share/festival/voices/english/kal_diphone ] || need+=(festvox-kallpc16k)
[ -d /usr/share/festival/voices/english/ked_diphone ] || need+=(festvox-kdlpc16k)
[ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] || need+=(festvox-us-slt-hts)
[ -f /usr/share/dict/words ] || need+=(wamerican)

if [ ${#need[@]} -eq 0 ]; then
  echo "demo packages: all present"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "error: the demo corpus needs these Debian packages and this machine has no apt-get:" \
       "${need[*]} (docs/DEMO_DATA.md: point MATPAC_DEMO_SOUNDFONTS, MATPAC_DEMO_BIN_PATH and" \
       "MATPAC_DEMO_WORDS at your own copies instead)" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "error: installing ${need[*]} needs root, and sudo is not installed; as root run:" \
         "apt-get update && apt-get install -y --no-install-recommends ${need[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi
run() {
  echo "+ $*"
  ((dry_run)) || "$@"
}
echo "demo packages: installing ${need[*]}"
run "${sudo[@]}" apt-get update -qq
run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends "${need[@]}"
