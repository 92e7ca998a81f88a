#!/usr/bin/env bash
# Install draftsmith, its three first-party plugins (editable) and the test dependencies.
# torch is pinned here (a local CPU wheel on our machines); the packages themselves only require torch>=2.6.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet "transformers>=5,<6" "pluggy>=1.3" "safetensors>=0.4" "PyYAML>=6" "tqdm>=4.60" \
    "pytest>=7" "pytest-xdist>=3" "hatchling>=1.18" "editables>=0.5"
# The optional features the tests exercise for real: experiment trackers, the run report, parquet/arrow data.
python -m pip install --quiet "tensorboard>=2.14" "wandb>=0.17" "mlflow-skinny>=2.10" "matplotlib>=3.7" "datasets>=2.16"
# regenerate --endpoint (httpx) and the real server its tests run: `transformers serve` (transformers' serving extras)
python -m pip install --quiet "httpx>=0.24" "transformers[serving]>=5,<6"
python -m pip install --quiet --no-build-isolation --no-deps -e . -e plugins/eagle -e plugins/dflash -e plugins/dspark
