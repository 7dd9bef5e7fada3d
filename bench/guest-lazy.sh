#!/bin/sh
# Guest side of bench/lazy.ts.
cd "$(dirname "$0")/.." || exit 1
exec node --import tsx bench/guest-lazy.ts
