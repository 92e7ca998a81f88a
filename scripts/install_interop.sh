#!/usr/bin/env bash
# Build one environment per real client the interop tests load drafts with (tests/test_interop_clients.py):
# speculators 0.9.0, SpecForge 0.2.0, z-lab dflash 0.1.0. Each pins its own transformers, so each gets its own
# venv; the package lists (interop/*.txt, from a working install) go in with --no-deps so no other torch, CUDA
# wheel or sglang is pulled. Location: $DRAFTSMITH_INTEROP_ENVS (default .interop/ in the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
root="${DRAFTSMITH_INTEROP_ENVS:-$PWD/.interop}"
mkdir -p "$root"
for list in interop/*.txt; do
  name="$(basename "$list" .txt)"
  env="$root/$name"
  if [ -x "$env/bin/python" ] && [ -f "$env/.complete" ]; then continue; fi
  rm -rf "$env"
  python -m venv "$env"
  "$env/bin/python" -m pip install --quiet "torch==2.13.0"
  grep -vE '^(torch|nvidia-|triton)' "$list" > "$env/requirements.txt"
  "$env/bin/python" -m pip install --quiet --no-deps -r "$env/requirements.txt"
  touch "$env/.complete"
  echo "interop environment ready: $env"
done
