#!/usr/bin/env bash
# One command, fresh machine, no hub: install draftsmith + plugins, train a draft on the embedded demo target and
# evaluate it with lossless speculative decoding.   bash scripts/demo.sh [--method eagle3|eagle1|dflash|dspark]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python scripts/demo.py "$@"
