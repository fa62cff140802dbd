#!/usr/bin/env bash
# Before queueing slices of the grid on one machine (README: Scale-out): the committed dvc.lock's train
# members whose outputs are not in this checkout's cache (a fresh clone's: whoever ran `dvc repro`
# before committing) are set aside, as workers and the coordinator set them aside, so that the last
# `dvc exp run` restores the members the queue trained from the run-cache instead of training them again.
set -euo pipefail
cd "$(dirname "$0")/.."
. cluster/committed.sh
use_project_venv
require_tools unlock
before=$(grep -c '^  train@' dvc.lock 2>/dev/null || true)
forget_locked_members
after=$(grep -c '^  train@' dvc.lock 2>/dev/null || true)
echo "unlock: $((${before:-0} - ${after:-0})) train member(s) of dvc.lock set aside (outputs not in this cache), ${after:-0} kept"
