# Sourced by worker.sh and coordinator.sh. Every machine must train the committed revision: the
# run-cache restores a member only where its command, deps and params are equal, so a worker whose
# params.yaml or code differ from the commit trains members nobody restores, and a coordinator that
# differs restores nothing and trains the whole grid itself, silently.
# The checkout's .venv (README command 1 makes it) where no dvc is on PATH: a Slurm job such as
# `sbatch --wrap cluster/coordinator.sh` runs without the submitting shell's activated environment.
use_project_venv() {
  if ! command -v dvc >/dev/null && [ -f .venv/bin/activate ]; then
    . .venv/bin/activate
  fi
}

require_tools() {  # $1: who is asking; checked before any other step, each of which runs one of them
  if ! command -v dvc >/dev/null; then
    echo "error: $1: no \`dvc\` on PATH: activate the project's environment (. .venv/bin/activate)" >&2
    exit 2
  fi
  # what members.py and forget_locked_members import (forestseg alone imports from the checkout with any python)
  if ! python -c "import numpy, dvc.repo, forestseg.config" 2>/dev/null; then  # a dvc of its own (pipx)
    echo "error: $1: no \`python\` on PATH that imports forestseg: activate the project's environment (. .venv/bin/activate)" >&2
    exit 2
  fi
}

require_committed() {  # $1: who is asking, for the error line
  local changed
  # init/ is a dep of train: a file added there (even one git would not commit yet) changes every member;
  # a new .dvc file (`dvc add data/<set>`) is data the workers' clones would not have
  changed=$( {
    git status --porcelain --untracked-files=no -- params.yaml dvc.yaml forestseg stages .dvc/config
    git status --porcelain --untracked-files=all -- init ':(glob)**/*.dvc'
  } | cut -c4- | sort -u | tr '\n' ' ')
  if [ -n "$changed" ]; then
    echo "error: $1: ${changed}differ from the last commit, which the workers train; commit (and push) them first, or git stash them" >&2
    exit 2
  fi
}

# The default DVC remote, checked before anything trains. DVC reads a local remote folder that is not
# there as an empty remote (a coordinator would train the whole grid again) and creates it on a push
# (a worker's members would land where nobody looks): a shared folder not mounted on this machine.
require_remote() {  # $1: who is asking; $2: read or write
  local name url
  # DVC 3.67 prints "No default remote set" on stdout and exits 1 where there is none
  name=$(dvc remote default 2>/dev/null) || name=""
  if [ -z "$name" ]; then
    echo "error: $1: no default DVC remote: \`dvc remote add -d store <url>\` and commit .dvc/config (README: Scale-out)" >&2
    exit 2
  fi
  url=$(dvc config "remote.$name.url")
  url=${url#file://}
  case "$url" in *://*) return 0 ;; esac  # s3://, ssh://, ...: DVC reports their errors itself
  [[ "$url" = /* ]] || url=".dvc/$url"  # DVC reads a relative remote path from the config's folder
  if [ ! -d "$url" ]; then
    echo "error: $1: DVC remote '$name' is the folder $url, which is not there on this machine (not mounted?); DVC would read it as empty" >&2
    exit 2
  fi
  if [ "$2" = write ] && [ ! -w "$url" ]; then
    echo "error: $1: DVC remote '$name' ($url) cannot be written from here; the members would train and not be pushed" >&2
    exit 2
  fi
}

# The committed dvc.lock names each train member's outputs as the machine that ran `dvc repro` wrote
# them (metrics.json holds its timings), which no other machine reproduces. Where a
# stage matches its lock entry, DVC restores that entry's outputs or trains; it never looks in the
# run-cache (StageCache.restore in dvc/stage/cache.py). So the entries whose outputs are neither here
# nor on the remote (nobody ran `dvc push` after that repro) are set aside: DVC then restores those
# members from the run-cache that workers push, and trains the rest. $@: the train@<member> stages to
# look at (none: every one in dvc.lock).
forget_locked_members() {
  dvc fetch -q "$@" 2>/dev/null || true  # the lock's outputs someone pushed; the missing ones are the point
  python - "$@" <<'PY'
import os
import sys
from pathlib import Path

from ruamel.yaml import YAML

lock, yaml = Path("dvc.lock"), YAML()
data = yaml.load(lock) if lock.is_file() else None
stages = data.get("stages") if isinstance(data, dict) else None
wanted = set(sys.argv[1:])
members = [n for n in stages or {} if n.startswith("train@") and (not wanted or n in wanted)]
if members:
    from dvc.repo import Repo

    with Repo() as repo:
        here = {s.addressing for s in repo.index.stages if s.addressing in members and s.outs_cached()}
    gone = [n for n in members if n not in here]
    for name in gone:
        del stages[name]
    if gone:
        tmp = lock.with_name(".dvc.lock.tmp")  # a killed write leaves the old lock, never half of one
        with open(tmp, "w") as f:
            yaml.dump(data, f)
        os.replace(tmp, lock)
PY
}
