#!/usr/bin/env bash
# Runs the whole test suite (needs root: tests mount images with the kernel and boot a qemu guest).
# The guest kernel tests (qemu under TCG, the longest part) run beside the host tests: the host tests
# wait on registries and daemons much of the time, and the guest fills it. (At a lower CPU priority
# the guest starves while the host tests compute, and its daemons miss their start deadlines.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
mkdir -p .cache
tsc_log=.cache/tsc.log
npx --no-install tsc --noEmit -p . > "$tsc_log" 2>&1 &
tsc=$!
# The shared fixtures (the Debian rootfs, debootstrap once, and its OCI layout) are made at the head
# of the guest's chain, while the host tests run: the host test that uses them comes late and waits
# for them if need be (test/helpers/debian-rootfs.ts), the guest needs them before its scenarios.
# Nothing may hang the run: a host test, and a host test file, that takes over TEST_TIMEOUT_MS fails
# (the runner kills the file's process; the longest file takes some 4 min), the guest's over
# GUEST_TIMEOUT_MS (its one test bounds itself at 40 min; it took 7-17 min here); each part as a whole
# ends after PART_TIMEOUT (a process a test left behind holding the runner's pipe), failing and saying so.
TEST_TIMEOUT_MS=${TEST_TIMEOUT_MS:-1200000}
GUEST_TIMEOUT_MS=${GUEST_TIMEOUT_MS:-2520000}
PART_TIMEOUT=${PART_TIMEOUT:-45m}
bounded() {
  local what=$1 status=0
  shift
  timeout -k 60 "$PART_TIMEOUT" "$@" || status=$?
  [ "$status" -eq 124 ] || [ "$status" -eq 137 ] && echo "# $what did not end within $PART_TIMEOUT: stopped" >&2
  return "$status"
}
guest_log=.cache/kernel-vm-test.log
(node --import tsx test/helpers/make-fixtures.ts && bounded 'the guest kernel tests' node --import tsx --test --test-timeout="$GUEST_TIMEOUT_MS" test/kernel-vm.root-kernel.test.ts) > "$guest_log" 2>&1 &
guest=$!
host_status=0
bounded 'the host tests' node --import tsx --test --test-timeout="$TEST_TIMEOUT_MS" $(ls test/*.test.ts | grep -v '^test/kernel-vm\.') native/*/test/*.test.ts || host_status=$?
guest_status=0
wait "$guest" || guest_status=$?
tsc_status=0
wait "$tsc" || tsc_status=$?
echo "# ---- guest kernel tests (fixtures, then test/kernel-vm.root-kernel.test.ts) ----"
cat "$guest_log"
echo "# ---- tsc --noEmit ----"
cat "$tsc_log"
echo "# host tests: exit $host_status; guest kernel tests: exit $guest_status; tsc: exit $tsc_status"
[ "$host_status" -eq 0 ] && [ "$guest_status" -eq 0 ] && [ "$tsc_status" -eq 0 ]
