#!/usr/bin/env bash
# Build the environment the "vs NeMo" benchmarks run in (benchmarks/train_step.py --vs nemo): the real NeMo AutoModel
# 0.7.0 package plus draftsmith and its three plugins (editable, from this checkout), side by side in one venv so both
# steps are timed in the same process. The package list (../shared/peers/nemo-automodel.txt, from a working install;
# a copy may be given as $DRAFTSMITH_PEERS_LIST) goes in with --no-deps so no other torch, CUDA wheel or triton is
# pulled. Location: $DRAFTSMITH_PEERS_ENVS (default .peers/ in the checkout). The main environment is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${DRAFTSMITH_PEERS_ENVS:-$PWD/.peers}"
list="${DRAFTSMITH_PEERS_LIST:-$PWD/../shared/peers/nemo-automodel.txt}"
env="$root/nemo-automodel-0.7.0"
mkdir -p "$root"
if [ -x "$env/bin/python" ] && [ -f "$env/.complete" ]; then
  echo "peer environment already built: $env"; exit 0
fi
rm -rf "$env"
python -m venv "$env"
"$env/bin/python" -m pip install --quiet "torch==2.13.0"
grep -vE '^(torch|nvidia-|triton)' "$list" > "$env/requirements.txt"
"$env/bin/python" -m pip install --quiet --no-deps -r "$env/requirements.txt"
# draftsmith's own dependencies that the NeMo list lacks, and the build backend for the editable installs.
"$env/bin/python" -m pip install --quiet "pluggy>=1.3" "hatchling>=1.18" "editables>=0.5"
"$env/bin/python" -m pip install --quiet --no-build-isolation --no-deps \
    -e . -e plugins/eagle -e plugins/dflash -e plugins/dspark
"$env/bin/python" -c "import nemo_automodel.components.speculative.dspark, draftsmith_dspark, draftsmith"
touch "$env/.complete"
echo "peer environment ready: $env"
