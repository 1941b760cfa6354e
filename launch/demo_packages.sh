#!/usr/bin/env bash
# Installs the Debian packages the demo corpus is rendered from
# (docs/DEMO_DATA.md), only those missing; does nothing when all are there.
# Works as root (containers, Colab, CI) or as a user with sudo. About 200 MB
# of packages, 30-60 s on a fresh machine (apt-get update included).
#
#   bash launch/demo_packages.sh            # install what is missing
#   bash launch/demo_packages.sh --dry-run  # print the commands instead
#
# README's first command and .ci/run both call it.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
parse_opts "" "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"

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

if ((${#need[@]} == 0)); then
  echo "demo packages: all present"
  exit 0
fi
command -v apt-get >/dev/null || die "the demo corpus needs the Debian packages" \
  "${need[*]} and this machine has no apt-get; point MATPAC_DEMO_SOUNDFONTS," \
  "MATPAC_DEMO_BIN_PATH and MATPAC_DEMO_WORDS at your own copies (docs/DEMO_DATA.md)"
sudo=()
if (($(id -u) != 0)); then
  command -v sudo >/dev/null || die "installing ${need[*]} needs root and sudo is missing;" \
    "as root run: apt-get update && apt-get install -y --no-install-recommends ${need[*]}"
  sudo=(sudo)
fi
echo "demo packages: installing ${need[*]}"
run "${sudo[@]}" apt-get update -qq
run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends "${need[@]}"
