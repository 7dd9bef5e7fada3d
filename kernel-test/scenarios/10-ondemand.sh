#!/bin/sh
# nydusd in fscache on-demand mode against the guest kernel: see kernel-test/guest/ondemand.test.ts.
exec sh kernel-test/guest/ondemand.sh
