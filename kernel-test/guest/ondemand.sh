#!/bin/sh
# Guest side of the on-demand scenarios: runs inside the kernel-test VM (chroot of the host root).
cd "$(dirname "$0")/../.." || exit 1
exec node --import tsx --test --test-reporter=spec kernel-test/guest/ondemand.test.ts
