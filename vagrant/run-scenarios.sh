#!/usr/bin/env bash
# Runs the on-demand scenarios natively in the Vagrant VM (its own kernel has the on-demand modules):
# the same guest test the qemu kernel-test runs, with scratch and cache directories made here.
set -euo pipefail
cd /vagrant-src
modprobe erofs; modprobe cachefiles
test -c /dev/cachefiles
export KT_SCRATCH=$(mktemp -d /tmp/kt-scratch.XXXXXX)
mkdir -p /var/cache/nydus-ts-kt && export KT_CACHE=/var/cache/nydus-ts-kt
node --import tsx kernel-test/plan.ts
exec sh kernel-test/guest/ondemand.sh
