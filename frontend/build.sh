#!/usr/bin/env bash
# Vendors the console's and portal's front-end assets from the npm registry (pinned by package-lock.json) into
# src/powergate/web/static/vendor/. Run by `make assets` (and so by `make install`); at run time nothing is
# fetched from anywhere. Install scripts are disabled: we only copy files out of the packages.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../src/powergate/web/static/vendor"
stamp="$here/node_modules/.powergate-stamp"

if ! command -v npm >/dev/null; then
  echo "frontend/build.sh: npm is not installed; install Node.js and npm (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
if [ ! -f "$stamp" ] || [ "$here/package-lock.json" -nt "$stamp" ]; then
  (cd "$here" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  touch "$stamp"
fi
mkdir -p "$out"
cp "$here/node_modules/chart.js/dist/chart.umd.min.js" "$out/chart.umd.js"
cp "$here/node_modules/htmx.org/dist/htmx.min.js" "$out/htmx.min.js"
cp "$here/node_modules/swagger-ui-dist/swagger-ui-bundle.js" "$out/swagger-ui-bundle.js"
cp "$here/node_modules/swagger-ui-dist/swagger-ui.css" "$out/swagger-ui.css"
