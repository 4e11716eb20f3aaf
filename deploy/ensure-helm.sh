#!/usr/bin/env bash
# Print the path of the helm binary the deploy checks use (deploy/tool-versions.env's
# HELM_MODULE), building it from its Go module the first time (a few minutes).
#
# The binary is cached per user, outside the repository, keyed by its version:
#   ${EMAIL_CHANNELS_TOOLS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/email-channels/tools}/helm-<version>
# so clean clones (CI, new worktrees) reuse it. Only when that directory cannot be written is
# the repository's var/tools/ (gitignored) used instead.
# Messages go to stderr; stdout carries only the path.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/tool-versions.env
source deploy/tool-versions.env
version=${HELM_MODULE##*@}
cache=${EMAIL_CHANNELS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/email-channels/tools}
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  echo "ensure-helm: $cache is not writable; using var/tools" >&2
  cache="$PWD/var/tools"
  mkdir -p "$cache"
fi
helm="$cache/helm-$version"
if [ -x "$helm" ]; then
  echo "$helm"
  exit 0
fi
go=$(command -v go || { [ -x /usr/local/go/bin/go ] && echo /usr/local/go/bin/go; } || true)
if [ -z "$go" ]; then
  echo "ensure-helm: go is needed to build helm ($HELM_MODULE)" >&2
  exit 1
fi
echo "ensure-helm: building helm from $HELM_MODULE into $cache (a few minutes, once)" >&2
build=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$build"' EXIT
GOBIN="$build" GOFLAGS=-buildvcs=false "$go" install "$HELM_MODULE" >&2
mv "$build/helm" "$helm"  # atomic: a parallel run sees no half-written binary
echo "$helm"
