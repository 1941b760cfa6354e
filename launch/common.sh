# shellcheck shell=bash
# Sourced by every launch script: option parsing, `run` (prints instead of
# running under --dry-run), and a few helpers.
#
# parse_opts "name zone spot! ..." "$@"
#   --name VALUE or --name=VALUE sets $NAME (upper case, '-' -> '_'); a name
#   ending in '!' is a flag (--spot sets SPOT=1). --dry-run and --help are always
#   accepted. The first word that is not an option, or everything after '--',
#   goes to the ARGS array (extra arguments for the command being launched).

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "$(basename "$0"): needs bash >= 4.4, this is $BASH_VERSION (macOS: brew install bash)" >&2
  exit 1
fi
# shellcheck disable=SC2034  # used by the scripts that source this
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)  # the repository
DRY_RUN=0
ARGS=()
# Dry-run lines go to fd 3 (a copy of stdout), so that they still reach the
# terminal when printed from inside $(...).
exec 3>&1

die() {
  printf '%s: %s\n' "$(basename "$0")" "$*" >&2
  exit 1
}

usage() {  # the script's header comment, without the leading '# '
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "$0"
}

parse_opts() {
  local spec=" $1 " word name value var
  shift
  while (($#)); do
    word=$1
    shift
    case $word in
      --dry-run) DRY_RUN=1; continue ;;
      -h|--help) usage; exit 0 ;;
      --) ARGS+=("$@"); break ;;
      --*) ;;
      *) ARGS+=("$word" "$@"); break ;;
    esac
    name=${word#--}
    name=${name%%=*}
    var=${name^^}
    var=${var//-/_}
    if [[ $spec == *" $name! "* ]]; then
      [[ $word != *=* ]] || die "--$name takes no value"
      printf -v "$var" '%s' 1
    elif [[ $spec == *" $name "* ]]; then
      if [[ $word == *=* ]]; then
        value=${word#*=}
      else
        (($#)) || die "--$name needs a value"
        value=$1
        shift
      fi
      printf -v "$var" '%s' "$value"
    else
      die "unknown option $word (see --help)"
    fi
  done
}

need() {  # need VAR...: each must be non-empty
  local var
  for var in "$@"; do
    [[ -n ${!var} ]] || die "--$(tr '[:upper:]_' '[:lower:]-' <<<"$var") is required (see --help)"
  done
}

shell_quote() {  # the words as one line that bash reads back as the same words
  local out=() word
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

run() {  # run CMD...: print it (dry run) or echo it to stderr and run it
  if ((DRY_RUN)); then
    shell_quote "$@" >&3
  else
    printf '+ %s\n' "$(shell_quote "$@")" >&2
    "$@"
  fi
}

BG_PIDS=()
run_bg() {  # run_bg CMD...: like run, in the background; wait_all collects them
  if ((DRY_RUN)); then
    printf '%s &\n' "$(shell_quote "$@")" >&3
  else
    printf '+ %s &\n' "$(shell_quote "$@")" >&2
    "$@" &
    BG_PIDS+=($!)
  fi
}

wait_all() {  # waits for every run_bg command; fails if any of them failed
  local pid failed=0
  if ((DRY_RUN)); then
    printf 'wait\n' >&3
    return
  fi
  for pid in "${BG_PIDS[@]}"; do
    wait "$pid" || failed=$((failed + 1))
  done
  BG_PIDS=()
  ((failed == 0)) || die "$failed of the background commands failed"
}

query() {  # query CMD...: run it for its output; under --dry-run print it, output ""
  if ((DRY_RUN)); then
    shell_quote "$@" >&3
  else
    "$@"
  fi
}

note() {  # a comment line in the dry-run listing, a progress line otherwise
  if ((DRY_RUN)); then
    printf '# %s\n' "$*" >&3
  else
    printf '[%s] %s\n' "$(date '+%F %T')" "$*" >&2
  fi
}

main_command() {  # main_command PYTHON: MAIN=(the training command) from CONFIG, WORKDIR, DATA, ARGS
  MAIN=("$1" -m matpac_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
  if [[ -n $DATA ]]; then
    MAIN+=("--config.data.path=$DATA")
  fi
  MAIN+=("${ARGS[@]}")
}
