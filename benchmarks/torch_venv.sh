# Sourced by the scripts that run a torch-side harness on this tree
# (hear_validate.sh, xares_check.sh); not run on its own.
#
#   torch_venv VENV [PIP_ARGS ...]
#
# Creates VENV on first use (marked by VENV/.ready, so a broken install is
# retried), with the system site packages so the project's jax/flax are
# reused, and installs torch ($TORCH_PIN; the default is the CPU wheel this
# machine's pip finds) with PIP_ARGS in one resolve. Every call then
# installs this tree, editable, with its `hear` extra (the code under test),
# which sourcing also puts first on PYTHONPATH.
TORCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
export PYTHONPATH="$TORCH_ROOT${PYTHONPATH:+:$PYTHONPATH}"

torch_venv() {
  local venv=$1
  shift
  if [ ! -f "$venv/.ready" ]; then
    python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q "$TORCH_PIN" "$@"
    touch "$venv/.ready"
  fi
  "$venv/bin/pip" install -q -e "$TORCH_ROOT[hear]"
}
