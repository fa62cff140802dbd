#!/usr/bin/env bash
# A worker: train some grid members here, then push their outputs and run-cache entries to the DVC
# remote, so any clone can restore them instead of training (`cluster/coordinator.sh`).
#   cluster/worker.sh bce-adam-0 bce-adam-1     these members
#   cluster/worker.sh --task K N                task K of N: members K, K+N, ... (a job-array task)
# Run it in a clone of its own (one `dvc repro` per checkout at a time) with a DVC remote configured.
set -euo pipefail
cd "$(dirname "$0")/.."
. cluster/committed.sh
use_project_venv
require_tools worker
require_committed worker
usage="usage: worker.sh MEMBER... | --task K N"
if [ "${1:-}" = --task ]; then
  [ $# -eq 3 ] || { echo "error: $usage" >&2; exit 2; }
  share=$(python cluster/members.py --task "$2" "$3") || exit 2  # its error line is printed; never "nothing to train"
  mapfile -t members <<< "$share"
  [ -n "$share" ] || members=()
  if [ "${#members[@]}" -eq 0 ]; then  # more tasks than members: this task's share is empty
    echo "worker: task $2 of $3 has no member of the grid; nothing to train"
    exit 0
  fi
else
  members=("$@")
fi
[ "${#members[@]}" -gt 0 ] || { echo "error: no members to train ($usage)" >&2; exit 2; }
grid=$(python cluster/members.py) || exit 2
for m in "${members[@]}"; do  # every name checked before hours of training, not when its turn comes
  grep -qxF -- "$m" <<< "$grid" || {
    echo "error: worker: $m is not a member of the grid in params.yaml; \`python cluster/members.py\` lists them" >&2
    exit 2
  }
done
require_remote worker write  # before hours of training that could not be pushed
forget_locked_members "${members[@]/#/train@}"  # a member another machine pushed is restored, not trained again
echo "worker: commit $(git rev-parse HEAD): ${members[*]}"
for m in "${members[@]}"; do
  # --pull: inputs and upstream stages that another machine already pushed are fetched, not recomputed
  dvc repro --pull "train@$m"
  # pushed at once, so a later member's failure (or a job's time limit) loses no finished training
  dvc push --run-cache --with-deps "train@$m"  # its data stages too, as dvc repro --pull fetches them
  echo "worker: $m trained (or restored: dvc repro says which) and pushed"
done
