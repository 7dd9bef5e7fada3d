#!/bin/sh
# The guest kernel has on-demand erofs and cachefiles, and Node runs in the chroot.
set -e
test -c /dev/cachefiles || { echo "no /dev/cachefiles"; exit 1; }
grep -q erofs /proc/filesystems
node -e 'console.log("node", process.version, "in the guest")'
mkdir -p "$KT_SCRATCH/src" "$KT_SCRATCH/mnt"
echo hello > "$KT_SCRATCH/src/f"
mkfs.erofs "$KT_SCRATCH/img" "$KT_SCRATCH/src" >/dev/null
mount -t erofs -o loop,ro "$KT_SCRATCH/img" "$KT_SCRATCH/mnt"
test "$(cat "$KT_SCRATCH/mnt/f")" = hello
umount "$KT_SCRATCH/mnt"
echo smoke ok
