# Sourced by worker.sh and coordinator.sh. Every machine must train the committed revision: the
# run-cache restores a member only where its command, deps and params are equal, so a worker whose
# params.yaml or code differ from the commit trains members nobody restores, and a coordinator that
# differs restores nothing and trains the whole grid itself, silently.
require_committed() {  # $1: who is asking, for the error line
  local changed
  changed=$(git status --porcelain --untracked-files=no -- params.yaml dvc.yaml forestseg stages init \
    ':(glob)**/*.dvc' | cut -c4- | tr '\n' ' ')
  if [ -n "$changed" ]; then
    echo "error: $1: ${changed}differ from the last commit, which the workers train; commit (and push) them first, or git stash them" >&2
    exit 2
  fi
}
