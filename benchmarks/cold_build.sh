#!/usr/bin/env bash
# Cold build of the lab's binaries, as on a fresh machine: empty Go module and build caches and
# an empty binary cache, so every module is fetched through the proxy and every package compiled.
#   benchmarks/cold_build.sh        (about 21 minutes on 2 cores; prints the time per binary)
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'chmod -R u+w "$scratch"; rm -rf "$scratch"' EXIT
start=$(date +%s)
GOMODCACHE="$scratch/mod" GOCACHE="$scratch/build" OPSLAB_CACHE="$scratch/opslab" .venv/bin/opslab lab build
echo "cold build: $(( $(date +%s) - start ))s"
