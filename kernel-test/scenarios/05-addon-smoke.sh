#!/bin/sh
# The native addon alone: a tiny daemon on it serves an erofs-utils image in fscache mode.
exec sh native/fscache/test/guest-smoke.sh
