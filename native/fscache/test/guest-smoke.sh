#!/bin/sh
# Smoke test of the fscache addon against a real kernel with cachefiles on-demand.
# Runs inside the kernel-test VM (chroot of the host root):
#   kernel-test/vm.sh native/fscache/test/guest-smoke.sh
# Makes a small chunked erofs image with a separate blob (erofs-utils), serves it with a tiny
# on-demand daemon written on the addon (ondemand-smoke.ts), mounts it with -o fsid, compares
# every file with the source, then mounts again warm (no READ may reach the daemon).
# Prints "SMOKE PASS" and exits 0 on success.
set -eu

repo=$(cd "$(dirname "$0")/../../.." && pwd)
smoke="node --import tsx $repo/native/fscache/test/ondemand-smoke.ts"
work=${KT_SCRATCH:?KT_SCRATCH: scratch dir (tmpfs) from vm.sh}/fscache-smoke
cache=${KT_CACHE:?KT_CACHE: ext4 dir for the cache from vm.sh}/fscache-smoke
fsid=smoke1
tag=blob1

fail() { echo "SMOKE FAIL: $*" >&2; dmesg | tail -20 >&2; exit 1; }
step() { echo "== $*"; }

rm -rf "$work" "$cache"
mkdir -p "$work/src/sub/deeper" "$work/mnt" "$cache"
cd "$work"

step "source tree"
printf 'hello, on-demand\n' > src/hello.txt
: > src/empty
head -c 1 /dev/urandom > src/one-byte
head -c 4095 /dev/urandom > src/sub/page-minus-1
head -c 4096 /dev/urandom > src/sub/page
head -c 4097 /dev/urandom > src/sub/page-plus-1
head -c 1234567 /dev/urandom > src/sub/deeper/big.bin
head -c 200000 /dev/zero > src/zeros
i=0; while [ $i -lt 40 ]; do echo "small file $i" > "src/sub/s$i"; i=$((i + 1)); done
ln -s hello.txt src/link

step "image"
mkfs.erofs --chunksize=4096 --blobdev="$work/blob" "$work/bootstrap" "$work/src" >mkfs.log 2>&1 || { cat mkfs.log; fail mkfs.erofs; }
$smoke tag "$work/bootstrap" "$tag"
ls -l bootstrap blob

step "daemon"
$smoke daemon --cache "$cache" --fsid "$fsid" --bootstrap "$work/bootstrap" --blob "$tag=$work/blob" \
  --ready "$work/ready" --stats "$work/stats.json" --read-delay-ms 50 &
daemon=$!
n=0
while [ ! -e "$work/ready" ]; do
  kill -0 $daemon 2>/dev/null || fail "daemon exited before binding"
  n=$((n + 1)); [ $n -lt 300 ] || fail "daemon not ready after 30 s"
  sleep 0.1
done

stats() {
  rm -f "$work/stats.json"
  kill -USR1 $daemon
  n=0; while [ ! -s "$work/stats.json" ]; do n=$((n + 1)); [ $n -lt 100 ] || fail "no stats"; sleep 0.1; done
  node -e "const s = require('$work/stats.json'); console.log($1)"
}

step "cold mount"
mount -t erofs -o fsid=$fsid none "$work/mnt" || fail "mount -t erofs -o fsid=$fsid"
# Readers in parallel, so that several READs are in flight at once.
readers=""
for f in sub/deeper/big.bin zeros sub/page-plus-1 sub/page hello.txt; do
  cat "$work/mnt/$f" >/dev/null &
  readers="$readers $!"
done
for r in $readers; do wait $r || fail "a parallel reader failed"; done  # (a bare wait would wait for the daemon)
diff -r --no-dereference "$work/src" "$work/mnt" || fail "contents differ (cold)"
[ "$(readlink "$work/mnt/link")" = hello.txt ] || fail "symlink target"
reads_cold=$(stats 's.reads')
echo "cold: $(stats 'JSON.stringify(s)')"
[ "$reads_cold" -gt 0 ] || fail "no READ reached the daemon"
[ "$(stats 's.errors.length + s.refused.length')" = 0 ] || fail "daemon errors"
[ "$(stats "s.opens.filter(o => o.volumeKey === 'erofs,$fsid' && o.cloexec).map(o => o.cookieKey).sort().join()")" \
  = "$(node -p "['$fsid', '$tag'].sort().join()")" ] \
  || fail "expected OPENs of the bootstrap ($fsid) and the blob ($tag), close-on-exec"
# The kernel asks in whole pages, and for several files at once (the daemon holds each READ 50 ms).
[ "$(stats 's.unalignedReads')" = 0 ] || fail "READs not aligned to 4096: $(stats 's.unalignedReads')"
[ "$(stats 's.maxInFlight')" -ge 2 ] || fail "parallel readers never had two READs in flight"
# Every file was read whole: the blob's cache file holds all of the blob, as lseek on the OPEN's fd shows.
[ "$(stats "s.held['$tag'] >= s.opens.find(o => o.cookieKey === '$tag').size")" = true ] \
  || fail "the blob's cache file holds $(stats "s.held['$tag']") bytes, less than the blob"
umount "$work/mnt"

step "warm mount"
mount -t erofs -o fsid=$fsid none "$work/mnt" || fail "second mount"
diff -r --no-dereference "$work/src" "$work/mnt" || fail "contents differ (warm)"
umount "$work/mnt"
reads_warm=$(stats 's.reads')
echo "warm: reads $reads_warm (cold $reads_cold), closes $(stats 's.closes')"
[ "$reads_warm" = "$reads_cold" ] || fail "the warm mount sent READs: the cache did not keep the data"
[ "$(stats 's.closes')" -ge 2 ] || fail "no CLOSE after umount"

step "refused OPEN"
mkdir -p "$work/mnt2"
if mount -t erofs -o fsid=unknown none "$work/mnt2" 2>mount.err; then umount "$work/mnt2"; fail "mount of an fsid the daemon refuses"; fi
echo "mount says: $(cat mount.err)"
[ "$(stats 's.refused.join()')" = "erofs,unknown/unknown" ] || fail "the daemon did not see the refused OPEN"

step "stop"
kill -TERM $daemon
wait $daemon || fail "daemon exit status $?"
echo "SMOKE PASS"
