// Chunk verification on libuv's thread pool: a run of chunks read from a blob in one piece is
// decompressed (zstd) into one output buffer and each chunk's digest (BLAKE3 or SHA-256) checked,
// off the event loop, with no JS thread or copy per run. See verifyRunNative in binding.d.ts.
#pragma once

#include <napi.h>

namespace fscache {

Napi::Value VerifyRunNative(const Napi::CallbackInfo& info);

}  // namespace fscache
