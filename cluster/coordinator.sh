#!/usr/bin/env bash
# The coordinator: fetch what the workers pushed and reproduce the whole pipeline; every train
# member that a worker ran is restored from the run-cache ("Stage 'train@...' is cached - skipping
# run"), so only what nobody trained is trained here (and pushed, as a worker pushes its members),
# then aggregate writes one report.
set -euo pipefail
cd "$(dirname "$0")/.."
. cluster/committed.sh
require_committed coordinator
# a Slurm grid's tasks cloned FORESTSEG_REV (cluster/slurm.sbatch): restore that revision's members
if [ -n "${FORESTSEG_REV:-}" ]; then
  rev=$(git rev-parse -q --verify "$FORESTSEG_REV^{commit}") || {
    echo "error: coordinator: FORESTSEG_REV=$FORESTSEG_REV is no commit of this checkout; git fetch it (or fix the name)" >&2
    exit 2
  }
  if [ "$rev" != "$(git rev-parse HEAD)" ]; then
    echo "error: coordinator: the workers trained FORESTSEG_REV=$FORESTSEG_REV, not this checkout's HEAD; git checkout $FORESTSEG_REV first" >&2
    exit 2
  fi
fi
require_remote coordinator read
dvc fetch --run-cache
log=$(mktemp)
trap 'rm -f "$log"' EXIT
dvc repro --pull "$@" 2>&1 | tee "$log"
restored=$(grep -c "Stage 'train@[^']*' is cached - skipping run" "$log" || true)
mapfile -t here < <(grep -o "Running stage 'train@[^']*'" "$log" | sed "s/^Running stage '//; s/'\$//" | sort -u)
pushed=""
if [ "${#here[@]}" -gt 0 ]; then
  # pushed like a worker's members, so a later coordinator (or a worker given the same member)
  # restores them instead of training them again; the report is written either way
  if dvc push --run-cache --with-deps "${here[@]}"; then
    pushed=" and pushed"
  else
    echo "warning: coordinator: the ${#here[@]} member(s) trained here were not pushed (dvc push failed above): another machine would train them again; run \`dvc push --run-cache --with-deps ${here[*]}\` when the remote takes writes" >&2
    pushed=", not pushed"
  fi
fi
echo "coordinator: commit $(git rev-parse HEAD): $restored member(s) restored from the run-cache, ${#here[@]} trained here$pushed"
