# Shared paths for the hack/ scripts. Sourced, not run.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=versions.env
source "$REPO_ROOT/hack/versions.env"
GEMMA_CACHE="${GEMMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-operator}"
TOOLS_BIN="$GEMMA_CACHE/bin"
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$GEMMA_CACHE/go/mod}"
export GOCACHE="${GOCACHE_OVERRIDE:-$GEMMA_CACHE/go/build}"
export GOFLAGS="${GOFLAGS:-} -trimpath"
export GOTOOLCHAIN=local
log() { printf '\033[1m[%s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
