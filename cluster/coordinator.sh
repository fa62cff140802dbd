#!/usr/bin/env bash
# The coordinator: fetch what the workers pushed and reproduce the whole pipeline; every train
# member that a worker ran is restored from the run-cache ("Stage 'train@...' is cached - skipping
# run"), so only what nobody trained is trained here, then aggregate writes one report.
set -euo pipefail
cd "$(dirname "$0")/.."
dvc fetch --run-cache
dvc repro --pull "$@"
