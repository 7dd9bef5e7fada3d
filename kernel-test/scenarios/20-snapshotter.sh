#!/bin/sh
# nydusd under nydus-snapshotter's lifecycle (supervisor, crash failover, upgrade): see
# kernel-test/guest/snapshotter.test.ts.
cd "$(dirname "$0")/../.." || exit 1
exec node --import tsx --test --test-reporter=spec kernel-test/guest/snapshotter.test.ts
