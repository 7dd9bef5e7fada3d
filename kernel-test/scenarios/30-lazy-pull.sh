#!/bin/sh
# Lazy pull from a registry inside the guest: see kernel-test/guest/lazy-pull.test.ts.
cd "$(dirname "$0")/../.." || exit 1
exec node --import tsx --test --test-reporter=spec kernel-test/guest/lazy-pull.test.ts
