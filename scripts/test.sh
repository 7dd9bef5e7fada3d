#!/usr/bin/env bash
# Runs the whole test suite (needs root: tests mount images with the kernel and boot a qemu guest).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
npx --no-install tsc --noEmit -p .
exec node --import tsx --test test/*.test.ts native/*/test/*.test.ts
