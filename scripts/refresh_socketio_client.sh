#!/usr/bin/env bash
# Vendor the standalone Socket.IO browser client (v4: same protocol as python-socketio 5.x).
# Usage: scripts/refresh_socketio_client.sh [version-spec]   (default: 4, the newest 4.x)
# Replaces web/static/vendor/socket.io-*.min.js and prints the new file name; update the
# pages' <script src> if the version changed (web/pages.py reads it from SOCKETIO_CLIENT).
set -euo pipefail
cd "$(dirname "$0")/.."
spec="${1:-4}"
vendor=web/static/vendor
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "socket.io-client@${spec}" >/dev/null)
tar -xzf "$work"/socket.io-client-*.tgz -C "$work"
version="$(node -p "require('$work/package/package.json').version")"
mkdir -p "$vendor"
rm -f "$vendor"/socket.io-*.min.js
cp "$work/package/dist/socket.io.min.js" "$vendor/socket.io-${version}.min.js"
# Keep the source map out: the pages never load it and it is large.
sed -i '/^\/\/# sourceMappingURL=/d' "$vendor/socket.io-${version}.min.js"
cp "$work/package/LICENSE" "$vendor/socket.io-LICENSE" 2>/dev/null || true
echo "$vendor/socket.io-${version}.min.js"
