#!/usr/bin/env bash
# The coordinator: fetch what the workers pushed and reproduce the whole pipeline; every train
# member that a worker ran is restored from the run-cache ("Stage 'train@...' is cached - skipping
# run"), so only what nobody trained is trained here (and pushed, as a worker pushes its members),
# then aggregate writes one report. The committed dvc.lock's train entries whose outputs nobody pushed
# are set aside first (forget_locked_members, cluster/committed.sh): DVC would train those members,
# never looking in the run-cache.
set -euo pipefail
cd "$(dirname "$0")/.."
. cluster/committed.sh
use_project_venv
require_tools coordinator
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
forget_locked_members
dvc fetch --run-cache
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# a failure after some members trained (another member, aggregate) still pushes those, as a worker
# pushes each member when it is done; the script then ends with repro's status
status=0
dvc repro --pull "$@" 2>&1 | tee "$log" || status=$?
restored=$(grep -c "Stage 'train@[^']*' is cached - skipping run" "$log" || true)
# already in this checkout: counted, and pushed below
mapfile -t kept < <(grep -o "Stage 'train@[^']*' didn't change, skipping" "$log" | sed "s/^Stage '//; s/' didn't.*//")
mapfile -t here < <(grep -o "Running stage 'train@[^']*'" "$log" | sed "s/^Running stage '//; s/'\$//" | sort -u)
# pulled as the commit's dvc.lock names them (someone ran `dvc push` after that repro): neither run nor restored
pulled=$(comm -23 <(grep -o "Pulling data for stage: 'train@[^']*'" "$log" | sed "s/.*: '//; s/'\$//" | sort -u) \
  <( (printf '%s\n' "${here[@]}"; grep -o "Stage 'train@[^']*' is cached" "$log" | sed "s/^Stage '//; s/' is cached\$//") | sort -u) | grep -c . || true)
# pushed like a worker's members, each on its own (one that fails does not stop the others), so a later
# coordinator (or a worker given the same member) restores them instead of training them again: those
# trained here that finished, and those already in this checkout, which an earlier coordinator stopped
# before its pushes (scancel, a time limit) may have trained; DVC pushes a member without outputs too
mapfile -t candidates < <(printf '%s\n' "${here[@]}" "${kept[@]}" | grep . | sort -u)
finished=()
if [ "${#candidates[@]}" -gt 0 ]; then
  # `dvc status` names the stages whose outputs differ from their lock entry ({}: none); where it
  # fails, every candidate is pushed, as before this check
  changed=$(dvc status --json "${candidates[@]}") || changed=""
  mapfile -t finished < <(python -c 'import json, sys; changed = json.loads(sys.argv[1] or "{}")
print("\n".join(m for m in sys.argv[2:] if m not in changed))' "$changed" "${candidates[@]}" | grep .)
fi
unfinished=$(comm -23 <(printf '%s\n' "${here[@]}" | grep . | sort) <(printf '%s\n' "${finished[@]}" | grep . | sort) | grep -c . || true)
unpushed=()
for m in "${finished[@]}"; do
  dvc push --run-cache --with-deps "$m" || unpushed+=("$m")
done
pushed=$((${#finished[@]} - ${#unpushed[@]}))
if [ "${#unpushed[@]}" -gt 0 ]; then
  echo "warning: coordinator: not pushed (dvc push failed above): ${unpushed[*]}; another machine would train them again: \`dvc push --run-cache --with-deps ${unpushed[*]}\` once the remote takes writes" >&2
fi
if [ "$status" -ne 0 ]; then
  echo "error: coordinator: dvc repro failed (its error is above); ${#here[@]} member(s) ran here, $unfinished of them unfinished; $pushed member(s) pushed" >&2
  exit "$status"
fi
total=$(python cluster/members.py | grep -c . || true)
echo "coordinator: commit $(git rev-parse HEAD): the report covers the grid's $total member(s): $restored restored from the run-cache, $pulled pulled as dvc.lock names them, ${#kept[@]} already in this checkout, ${#here[@]} trained here; $pushed pushed"
