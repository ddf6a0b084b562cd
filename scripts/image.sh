#!/usr/bin/env bash
# Build the container image with docker or podman, whichever can run here.
#   scripts/image.sh [TAG]       build (TAG default: realtime:dev); prints the engine's build log
#   scripts/image.sh --engine    print the engine that would be used (nothing, exit 1, if none)
# The bases are the official node:20-slim and python:3.11-slim when their registry answers;
# otherwise scripts/image-bases.sh makes Debian bookworm equivalents locally (cached).
# Environment: ENGINE=docker|podman, BASES=official|local (default: probe the registry).
set -euo pipefail
cd "$(dirname "$0")/.."

engine() {
  if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"; return; fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v podman >/dev/null && podman info >/dev/null 2>&1; then echo podman; return; fi
  return 1
}

if [ "${1:-}" = --engine ]; then engine; exit; fi
tag=${1:-realtime:dev}
engine=$(engine) || { echo "image: neither docker (with a running daemon) nor podman can run here" >&2; exit 1; }

bases=${BASES:-}
if [ -z "$bases" ]; then
  # The official bases are on Docker Hub; 401 (authentication wanted) means it answers.
  code=$(curl -s -o /dev/null -m 10 -w '%{http_code}' https://registry-1.docker.io/v2/ || true)
  if [ "$code" = 401 ] || [ "$code" = 200 ]; then bases=official; else bases=local; fi
fi

args=(build -t "$tag")
if [ "$engine" = podman ]; then
  # runc: crun fails on hybrid cgroup v1 hosts. rlimits: podman would raise them to values a
  # container may not be given. docker format: the OCI format has no HEALTHCHECK.
  if command -v runc >/dev/null; then args=(--runtime runc "${args[@]}"); fi
  args+=(--format docker --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
fi
if [ "$bases" = local ]; then
  echo "image: no registry reachable; using local bases (scripts/image-bases.sh)" >&2
  made=$(scripts/image-bases.sh "$engine")
  for line in $made; do args+=(--build-arg "$line"); done
  [ "$engine" = podman ] && args+=(--pull=never)
fi
echo "image: $engine ${args[*]} ." >&2
exec "$engine" "${args[@]}" .
