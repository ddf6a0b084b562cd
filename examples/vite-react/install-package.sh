#!/usr/bin/env bash
# Packs web/ exactly as `npm publish` would (`npm pack`, which builds it first) and installs
# that tarball here, as an app outside this repository would install the published package.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
web=$here/../../web
quiet=(--no-audit --no-fund --loglevel=error --prefer-offline)
cd "$web"
[ -d node_modules ] || npm ci "${quiet[@]}"
mkdir -p "$here/vendor"
tarball=$(npm pack --silent --pack-destination "$here/vendor" | tail -n 1)
mv -f "$here/vendor/$tarball" "$here/vendor/realtime-tasks-web.tgz"
cd "$here"
# Installing the tarball by name replaces the copy in node_modules even when its version is
# unchanged. Its hash changes whenever web/ does, so the lockfile keeps none for it (every
# other package stays pinned by version and integrity).
npm install "${quiet[@]}" ./vendor/realtime-tasks-web.tgz
node -e '
const fs = require("fs");
const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
for (const entry of Object.values(lock.packages)) if (entry.resolved?.startsWith("file:")) delete entry.integrity;
fs.writeFileSync("package-lock.json", JSON.stringify(lock, null, 2) + "\n");
'
