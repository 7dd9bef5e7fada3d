#!/bin/sh
# Lazy pull from a registry inside the guest: see kernel-test/guest/lazy-pull.test.ts.
cd "$(dirname "$0")/../.." || exit 1
node --import tsx --test --test-reporter=spec kernel-test/guest/lazy-pull.test.ts
status=$?
# A test process that dies without a word ('test failed' and no subtest: a signal, the OOM killer)
# leaves its cause in the kernel's log only.
[ "$status" -eq 0 ] || dmesg | grep -i -E 'oom|killed process|segfault|traps:' | tail -20
exit "$status"
