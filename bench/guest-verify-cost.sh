#!/bin/sh
# Guest side of bench/verify-cost.ts.
cd "$(dirname "$0")/.." || exit 1
exec node --import tsx bench/verify-cost.ts
