#!/usr/bin/env bash
# Installs what nydus-ts needs on a Debian machine, as root; quick when everything is there.
#   apt packages: erofs-utils (reference tools), python3 (mount(2) helper and test supervisor), libzstd-dev (the
#   addon's chunk decompression), tar, attr tools,
#   docker-registry, umoci, skopeo, apache2-utils, openssl (registry tests), zstd (a test's independent reader)
#   npm ci: dependencies and the native addons (build/Release/*.node), built offline from /usr/include/node
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export npm_config_nodedir=${npm_config_nodedir:-/usr}

need=()
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
command -v python3 >/dev/null || need+=(python3)
command -v mkfifo >/dev/null || need+=(coreutils)
command -v g++ >/dev/null || need+=(g++ make)
# The fscache addon decompresses chunks with libzstd (native/fscache/chunk_verify.cc).
[ -f /usr/include/zstd.h ] || need+=(libzstd-dev)
# ...and liblz4 (lz4_block chunks: native/fscache/chunk_verify.cc).
[ -f /usr/include/lz4.h ] || need+=(liblz4-dev)
# A real OCI registry and independent image tools for the registry and conversion tests.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v umoci >/dev/null || need+=(umoci)
command -v skopeo >/dev/null || need+=(skopeo)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v openssl >/dev/null || need+=(openssl)
# The Debian rootfs fixture (test/helpers/debian-rootfs.ts).
command -v debootstrap >/dev/null || need+=(debootstrap)
# The independent reader of inlined blob meta decompresses its bootstrap (test/helpers/nydus-blob-tail.py).
command -v zstd >/dev/null || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# npm ci writes node_modules/.package-lock.json: older than package-lock.json means out of date.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci (dependencies and native addons, about two minutes)" >&2
  JOBS=max npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f build/Release/xattr.node ] || [ ! -f build/Release/fscache.node ] || [ binding.gyp -nt build/Release/xattr.node ] \
   || [ -n "$(find native -newer build/Release/xattr.node -name '*.cc' -o -newer build/Release/xattr.node -name '*.h' | head -1)" ]; then
  echo "setup: building the native addons" >&2
  npx --no-install node-gyp rebuild --loglevel=error >/dev/null
fi
if [ ! -f dist/.built ] || [ -n "$(find src erofs native scripts/build.mjs -newer dist/.built \( -name '*.ts' -o -name '*.cc' -o -name '*.h' -o -name 'build.mjs' \) | head -1)" ]; then
  echo "setup: bundling the commands into dist/" >&2
  node --import tsx scripts/build.mjs
fi
