#!/usr/bin/env bash
# Builds (once, cached in kernel-test/.cache) what the kernel-test guest needs:
#   - Debian's 6.12 kernel, with erofs.ko and cachefiles.ko rebuilt out of tree from Debian's own
#     linux-source with CONFIG_EROFS_FS_ONDEMAND / CONFIG_CACHEFILES_ONDEMAND on;
#   - a busybox initramfs that mounts the host root over 9p and runs a test script in a chroot of it.
# Idempotent: a second run only checks the stamps. Needs root and Debian's package mirror.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="$here/.cache"
mkdir -p "$cache"
log() { echo "kernel-test setup: $*" >&2; }

need=()
for c in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio xz:xz-utils make:make gcc-12:gcc-12 mkfs.ext4:e2fsprogs mkfs.erofs:erofs-utils pahole:pahole; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
[ -e /usr/lib/x86_64-linux-gnu/libelf.so.1 ] || need+=(libelf1)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -f "$cache/version" ]; then
  [ -n "$(apt-cache policy linux-source-6.12 2>/dev/null | awk '/Candidate/ {print $2}')" ] || apt-get update -qq
  apt-cache policy linux-source-6.12 | awk '/Candidate/ {print $2}' > "$cache/version"
fi
pkgver=$(cat "$cache/version")            # e.g. 6.12.117-1~deb12u1
abi="${pkgver%%-*}+deb12"                  # e.g. 6.12.117+deb12
kver="$abi-amd64"
root="$cache/root"

if [ ! -f "$cache/debs.stamp" ]; then
  log "downloading Debian's $kver kernel, headers, kbuild and source"
  mkdir -p "$cache/debs"
  (cd "$cache/debs" && apt-get download -o APT::Sandbox::User=root \
    "linux-image-$kver-unsigned" "linux-headers-$kver" "linux-headers-$abi-common" "linux-kbuild-$abi" \
    "linux-source-6.12=$pkgver" >/dev/null)
  rm -rf "$root"
  mkdir -p "$root"
  for d in "$cache"/debs/*.deb; do dpkg -x "$d" "$root"; done
  touch "$cache/debs.stamp"
fi

src="$cache/src"
hdr="$root/usr/src/linux-headers-$kver"
if [ ! -f "$cache/modules.stamp" ]; then
  log "rebuilding erofs.ko and cachefiles.ko with on-demand support"
  rm -rf "$src"
  mkdir -p "$src"
  tar -xJf "$root"/usr/src/linux-source-6.12.tar.xz -C "$src" --strip-components=1 \
    linux-source-6.12/fs/erofs linux-source-6.12/fs/cachefiles
  # The headers refer to each other and to kbuild by absolute /usr paths: point them into the cache.
  sed -i "s|/usr/src/|$root/usr/src/|g" "$hdr/Makefile"
  for l in $(find "$root/usr/src" "$root/usr/lib/linux-kbuild-"* -maxdepth 3 -type l); do
    t=$(readlink "$l")
    case "$t" in /usr/*) ln -sfn "$root$t" "$l" ;; esac
  done
  make -s -C "$hdr" M="$src/fs/erofs" CC=gcc-12 CONFIG_EROFS_FS=m CONFIG_EROFS_FS_ONDEMAND=y \
    KCFLAGS=-DCONFIG_EROFS_FS_ONDEMAND=1 modules
  make -s -C "$hdr" M="$src/fs/cachefiles" CC=gcc-12 CONFIG_CACHEFILES=m CONFIG_CACHEFILES_ONDEMAND=y \
    KCFLAGS=-DCONFIG_CACHEFILES_ONDEMAND=1 modules
  touch "$cache/modules.stamp"
fi

if [ ! -f "$cache/initramfs.stamp" ] || [ "$here/init" -nt "$cache/initramfs.cpio.gz" ]; then
  log "making the initramfs"
  ir="$cache/initramfs"
  rm -rf "$ir"
  mkdir -p "$ir"/{bin,dev,proc,sys,host,mods,tmp}
  cp /bin/busybox "$ir/bin/busybox"
  for a in sh mount umount insmod mkdir cat echo poweroff sleep mknod chroot ls dmesg; do ln -s busybox "$ir/bin/$a"; done
  mdir="$root/lib/modules/$kver/kernel"
  for m in crypto/crc32c_generic lib/libcrc32c fs/netfs/netfs lib/crc16 fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4 \
           drivers/block/virtio_blk net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p drivers/block/loop \
           lib/lz4/lz4_decompress lib/zstd/zstd_common lib/zstd/zstd_decompress; do
    f=$(ls "$mdir/$m.ko"* 2>/dev/null | head -1 || true)
    [ -n "$f" ] && cp "$f" "$ir/mods/"
  done
  # busybox insmod cannot decompress: store the modules plain.
  for f in "$ir"/mods/*.xz; do [ -e "$f" ] && xz -d "$f"; done
  cp "$src/fs/erofs/erofs.ko" "$src/fs/cachefiles/cachefiles.ko" "$ir/mods/"
  cp "$here/init" "$ir/init"
  chmod +x "$ir/init"
  (cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) > "$cache/initramfs.cpio.gz"
  cp "$root/boot/vmlinuz-$kver" "$cache/vmlinuz"
  touch "$cache/initramfs.stamp"
fi
mkdir -p "$cache/guest-scratch" "$cache/guest-cache"
