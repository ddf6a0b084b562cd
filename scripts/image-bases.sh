#!/usr/bin/env bash
# Make the Dockerfile's two base images locally, for machines that cannot pull from a registry:
#   PYTHON_IMAGE  Debian bookworm (minbase) + python3.11, pip, `python` and the CA certificates,
#                 standing in for python:3.11-slim;
#   NODE_IMAGE    Debian bookworm (minbase) + this machine's Node.js (>= 20) and npm, standing in
#                 for node:20-slim (Debian's own nodejs is 18, too old for web/).
# Both are root filesystems made by mmdebstrap from the Debian mirror and imported with
# `ENGINE import`. The tarballs are cached in $REALTIME_IMAGE_CACHE (default
# ~/.cache/realtime-image), and the image tags carry a hash of this script and the Node version,
# so a cached base is reused only while it is what this script would make.
# Prints two lines, PYTHON_IMAGE=... and NODE_IMAGE=..., for `--build-arg`.
# Usage: scripts/image-bases.sh [ENGINE]   (ENGINE: podman or docker; default podman)
set -euo pipefail
engine=${1:-podman}
cache=${REALTIME_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/realtime-image}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

node_bin=$(command -v node || true)
npm_dir=/usr/lib/node_modules/npm
if [ -z "$node_bin" ] || [ ! -d "$npm_dir" ]; then
  echo "image-bases: need Node.js >= 20 with npm in $npm_dir on this machine (for the web build stage)" >&2
  exit 1
fi
node_version=$("$node_bin" --version)
case $node_version in
  v1[0-9].*) echo "image-bases: Node $node_version is too old (need >= 20)" >&2; exit 1 ;;
esac

key=$( (cat "$0"; echo "$node_version") | sha256sum | cut -c1-12)
python_image=localhost/realtime-base-python:3.11-$suite-$key
node_image=localhost/realtime-base-node:${node_version#v}-$suite-$key

# The machine's own extra CA certificates (e.g. a TLS-inspecting egress proxy): pip and npm in
# the build must trust the same roots as the host does to reach PyPI and the npm registry.
extra_cas=(/usr/local/share/ca-certificates/*.crt)
[ -e "${extra_cas[0]}" ] || extra_cas=()

have() { "$engine" image inspect "$1" >/dev/null 2>&1; }

# make_rootfs TARBALL PACKAGES [CUSTOMIZE-HOOK...]
make_rootfs() {
  local tarball=$1 packages=$2
  shift 2
  local hooks=(--customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"')
  for ca in "${extra_cas[@]}"; do
    hooks+=(--customize-hook="copy-in $ca /usr/local/share/ca-certificates")
  done
  hooks+=(--customize-hook='chroot "$1" update-ca-certificates >/dev/null')
  for hook in "$@"; do hooks+=(--customize-hook="$hook"); done
  mkdir -p "$cache"
  echo "image-bases: making $tarball (mmdebstrap $suite minbase: $packages)" >&2
  # No manuals, documentation or translations in an image (the copyright files stay).
  mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" "${hooks[@]}" \
    --dpkgopt=path-exclude=/usr/share/man/* --dpkgopt=path-exclude=/usr/share/locale/* \
    --dpkgopt=path-exclude=/usr/share/info/* --dpkgopt=path-exclude=/usr/share/doc/* \
    --dpkgopt=path-include=/usr/share/doc/*/copyright \
    "$suite" "$tarball.part" "$mirror" >&2
  mv "$tarball.part" "$tarball"
}

# base IMAGE TARBALL PACKAGES CHANGES... -- HOOKS...
base() {
  local image=$1 tarball=$cache/$2 packages=$3
  shift 3
  local changes=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do changes+=(--change "$1"); shift; done
  [ $# -gt 0 ] && shift
  if ! have "$image"; then
    [ -s "$tarball" ] || make_rootfs "$tarball" "$packages" "$@"
    echo "image-bases: importing $image" >&2
    "$engine" import "${changes[@]}" "$tarball" "$image" >/dev/null
  fi
}

command -v mmdebstrap >/dev/null || { echo "image-bases: mmdebstrap is required (apt-get install mmdebstrap)" >&2; exit 1; }

# python:3.11-slim installs packages into its own Python with pip; Debian marks its Python
# as externally managed (PEP 668), which would refuse the Dockerfile's `pip install`.
base "$python_image" "python-$suite-$key.tar" python3,python3-pip,python-is-python3,ca-certificates \
  'ENV LANG=C.UTF-8' 'CMD ["python3"]' -- \
  'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'

node_hooks=('mkdir -p "$1/usr/lib/node_modules"' "copy-in $node_bin /usr/bin" "copy-in $npm_dir /usr/lib/node_modules"
  'ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/bin/npm"'
  'ln -s ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/bin/npx"')
base "$node_image" "node-${node_version#v}-$suite-$key.tar" ca-certificates \
  'ENV LANG=C.UTF-8' 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' 'CMD ["node"]' -- \
  "${node_hooks[@]}"

echo "PYTHON_IMAGE=$python_image"
echo "NODE_IMAGE=$node_image"
