#!/bin/sh
# Guest side of bench/ondemand.ts.
cd "$(dirname "$0")/.." || exit 1
exec node --import tsx bench/guest-ondemand.ts
