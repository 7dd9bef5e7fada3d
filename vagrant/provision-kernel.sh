#!/usr/bin/env bash
# Installs Debian's 6.12 kernel and replaces its erofs/cachefiles modules with on-demand builds.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
ver=$(apt-cache policy linux-source-6.12 | awk '/Candidate/ {print $2}')
abi="${ver%%-*}+deb12-amd64"
apt-get install -y -qq "linux-image-$abi" "linux-headers-$abi" "linux-source-6.12=$ver" make gcc-12 xz-utils erofs-utils
src=$(mktemp -d)
tar -xJf /usr/src/linux-source-6.12.tar.xz -C "$src" --strip-components=1 linux-source-6.12/fs/erofs linux-source-6.12/fs/cachefiles
make -C "/lib/modules/$abi/build" M="$src/fs/erofs" CC=gcc-12 CONFIG_EROFS_FS=m CONFIG_EROFS_FS_ONDEMAND=y KCFLAGS=-DCONFIG_EROFS_FS_ONDEMAND=1 modules
make -C "/lib/modules/$abi/build" M="$src/fs/cachefiles" CC=gcc-12 CONFIG_CACHEFILES=m CONFIG_CACHEFILES_ONDEMAND=y KCFLAGS=-DCONFIG_CACHEFILES_ONDEMAND=1 modules
install -D -m 644 "$src/fs/erofs/erofs.ko" "/lib/modules/$abi/updates/erofs.ko"
install -D -m 644 "$src/fs/cachefiles/cachefiles.ko" "/lib/modules/$abi/updates/cachefiles.ko"
depmod "$abi"
mkdir -p /etc/modules-load.d
printf 'erofs\ncachefiles\n' > /etc/modules-load.d/nydus-ts.conf
