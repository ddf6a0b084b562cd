#!/usr/bin/env bash
# Install the Debian packages the tests need, only those missing; `apt-get update` runs once.
# Usage: scripts/system-deps.sh COMMAND=PACKAGE[,PACKAGE...] ...
set -euo pipefail
missing=()
for spec in "$@"; do
  cmd=${spec%%=*}
  pkgs=${spec#*=}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -e "$cmd" ]; then
    IFS=',' read -r -a list <<<"$pkgs"
    missing+=("${list[@]}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages: ${missing[*]} (run as root or install them: apt-get install -y ${missing[*]})" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
