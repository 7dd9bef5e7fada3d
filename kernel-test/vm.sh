#!/usr/bin/env bash
# Boots the kernel-test guest and runs one script in it: kernel-test/vm.sh <script> (a path in the
# repository). The script runs as root in a chroot of the host root (read-only 9p), from the repository
# directory, with:
#   KT_SCRATCH  a tmpfs directory for scratch files and mount points
#   KT_CACHE    an empty ext4 directory (a fresh virtio disk, KT_DISK_SIZE, 512M by default) for the cachefiles cache
# The guest console streams to stdout; the exit status is the script's (99 when the guest gave none).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache="$here/.cache"
script=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[ -f "$cache/initramfs.stamp" ] || bash "$here/setup.sh"
disk=$(mktemp "$cache/cache-disk.XXXXXX")
out=$(mktemp "$cache/console.XXXXXX")
trap 'rm -f "$disk" "$out"' EXIT
boot() {
  truncate -s "${KT_DISK_SIZE:-512M}" "$disk"
  mkfs.ext4 -q -F "$disk"
  timeout "${KT_TIMEOUT:-1200}" qemu-system-x86_64 -machine q35 -accel tcg -cpu max -m 2G -smp 2 -nographic -no-reboot -net none \
    -kernel "$cache/vmlinuz" -initrd "$cache/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1 kt.repo=$repo kt.script=$script" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -drive "file=$disk,if=virtio,format=raw" </dev/null | tee "$out" || true
}
boot
# A guest kernel that panics while booting, before the script started (no KT-START line from the
# initramfs; seen under TCG as an int3 oops in sched_clock_cpu, the emulator racing the kernel's
# boot-time code patching), is the emulator's failure, not the script's: the guest boots once more.
if ! grep -q "KT-START" "$out" && grep -q "Kernel panic" "$out"; then
  echo "kernel-test/vm.sh: the guest kernel panicked while booting, before $(basename "$script") started: booting again"
  boot
fi
code=$(sed -n 's/.*KT-EXIT \([0-9]*\).*/\1/p' "$out" | tail -1)
exit "${code:-99}"
