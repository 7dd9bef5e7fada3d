#!/bin/sh
# Runs a CLI of nydus-ts from the checkout: bin/<name> links here; no global install.
# It runs the bundle dist/<name>.mjs (made by scripts/build.mjs in setup) when that is newer than every
# source file, and the TypeScript sources through tsx otherwise (while developing). The bundles map
# their stack traces to the sources themselves, when one is formatted (src/cli/stack-maps.ts).
# The shell's own expansions, not basename, dirname and readlink, where they tell the same: every CLI
# start (nydusd's is timed, bench/ondemand.ts) waited for each program started here, 5-10 ms apiece on
# the bench host; up to node's start, this script took 33 ms there with them, 15 ms without.
name=${0##*/}
here=${0%/*}
[ "$here" = "$0" ] && here=.
if [ "$here/run.sh" -ef "$0" ]; then
  root=$(cd "$here/.." && pwd)
else
  root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
fi
# The builders make many small short-lived objects (one per entry), the daemon a few per chunk: V8's
# default young generation (16 MiB semi-spaces, in every isolate: nydusd's worker threads too) would
# hold 30-40 MiB more than they ever use, for no measurable speed.
heap=
# (nydusd's supervisor gains nothing from it, and a heap flag costs node its built-in code cache,
# 25 ms of start: the supervisor gives it to the worker it spawns, src/daemon/run.ts.)
case $name in nydus-image|nydusify) heap=--max-semi-space-size=2 ;; esac
# Node 20 reads and parses NODE_EXTRA_CA_CERTS at every start, before any code runs (70 ms for a
# distribution's whole CA bundle). nydusd's only TLS connections are its backends', whose dispatchers
# add these certificates when they are made (src/daemon/backend/remote.ts): it starts without them.
if [ "$name" = nydusd ] && [ -n "${NODE_EXTRA_CA_CERTS:-}" ]; then
  export NYDUSD_EXTRA_CA_CERTS="$NODE_EXTRA_CA_CERTS"
  unset NODE_EXTRA_CA_CERTS
fi
# nydus-image export --threads N: its chunk jobs run on libuv's pool, which node sizes as it starts.
if [ "$name" = nydus-image ] && [ -z "${UV_THREADPOOL_SIZE:-}" ]; then
  prev=
  for a in "$@"; do
    case $prev in --threads) threads=$a ;; esac
    case $a in --threads=*) threads=${a#--threads=} ;; esac
    prev=$a
  done
  threads=${threads#+}  # as the CLI reads it (src/cli/thread-count.ts)
  case ${threads:-} in ''|*[!0-9]*) ;; *) export UV_THREADPOOL_SIZE="$threads" ;; esac
fi
if [ -f "$root/dist/$name.mjs" ] && [ -f "$root/dist/.built" ] \
   && [ -z "$(find "$root/src" "$root/erofs" "$root/native" -name '*.ts' -newer "$root/dist/.built" -print -quit 2>/dev/null)" ]; then
  exec node $heap "$root/dist/$name.mjs" "$@"
fi
if [ ! -f "$root/node_modules/tsx/dist/loader.mjs" ]; then
  echo "$name: dependencies are not installed; run scripts/setup.sh in $root" >&2
  exit 2
fi
exec node $heap --import "file://$root/node_modules/tsx/dist/loader.mjs" "$root/src/cli/$name.ts" "$@"
