#!/usr/bin/env bash
# Runs every kernel-test scenario in its own guest boot; prints one line per scenario and a summary.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/setup.sh" || exit 1
# The images the scenarios mount are built on the host; the guest sees them through 9p.
(cd "$here/.." && node --import tsx kernel-test/plan.ts) || exit 1
pass=0 fail=0
# Boots the guest for one scenario (vm.sh boots again once if the guest kernel panics while booting).
run_scenario() {
  bash "$here/vm.sh" "$1" > "$2" 2>&1
}
for s in "$here"/scenarios/*.sh; do
  if run_scenario "$s" "$here/.cache/$(basename "$s" .sh).log"; then
    pass=$((pass + 1)); echo "ok   $(basename "$s")"
  else
    fail=$((fail + 1)); echo "FAIL $(basename "$s") (log: kernel-test/.cache/$(basename "$s" .sh).log)"; tail -20 "$here/.cache/$(basename "$s" .sh).log"
  fi
done
echo "kernel-test: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
