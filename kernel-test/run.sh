#!/usr/bin/env bash
# Runs every kernel-test scenario in its own guest boot; prints one line per scenario and a summary.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/setup.sh" || exit 1
# The images the scenarios mount are built on the host; the guest sees them through 9p.
(cd "$here/.." && node --import tsx kernel-test/plan.ts) || exit 1
pass=0 fail=0
# Boots the guest for one scenario. A guest kernel that panics while booting, before the scenario
# started (no KT-START line from kernel-test/init; seen under TCG as an int3 oops in early boot), is
# the emulator's failure, not the scenario's: it is booted once more, the first log kept beside.
run_scenario() {
  local s=$1 log=$2
  bash "$here/vm.sh" "$s" > "$log" 2>&1 && return 0
  if grep -q "Kernel panic" "$log" && ! grep -q "KT-START" "$log"; then
    mv "$log" "$log.boot-panic"
    echo "note $(basename "$s"): the guest kernel panicked while booting (log: ${log#"$here/"}.boot-panic); booting again"
    bash "$here/vm.sh" "$s" > "$log" 2>&1 && return 0
  fi
  return 1
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
