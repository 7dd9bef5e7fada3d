#!/usr/bin/env bash
# Debian bookworm ships Node 18; nydus-ts needs Node 20, installed here with `n`. Then the project's
# own setup (apt packages, npm ci, native addons).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq python3 g++ make erofs-utils >/dev/null
if ! command -v node >/dev/null || ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then
  apt-get install -y -qq nodejs npm >/dev/null
  npm install -g n >/dev/null && n 20 >/dev/null
fi
cd /vagrant-src
npm_config_nodedir=$(dirname "$(dirname "$(command -v node)")") bash scripts/setup.sh
