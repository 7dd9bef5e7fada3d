#!/bin/sh
# Runs a CLI of nydus-ts from the checkout: bin/<name> links here; no build step, no global install.
name=$(basename "$0")
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
if [ ! -f "$root/node_modules/tsx/dist/loader.mjs" ]; then
  echo "$name: dependencies are not installed; run 'npm ci' in $root" >&2
  exit 2
fi
exec node --import "file://$root/node_modules/tsx/dist/loader.mjs" "$root/src/cli/$name.ts" "$@"
