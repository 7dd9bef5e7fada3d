// Chunk verification on libuv's thread pool: a run of chunks read from a blob in one piece is
// decompressed (zstd) into one output buffer and each chunk's digest (BLAKE3 or SHA-256) checked,
// off the event loop, with no JS thread or copy per run. See verifyRunNative in binding.d.ts.
#pragma once

#include <napi.h>

namespace fscache {

Napi::Value VerifyRunNative(const Napi::CallbackInfo& info);

// The same for a run whose stored bytes are a range of a blob file: the pool thread reads them
// itself, verifies them into a pooled buffer (AcquireAlignedBuffer) and writes the chunks that pass into the cache
// file. No byte of the run crosses into JS. See verifyBlobRange in binding.d.ts.
Napi::Value VerifyBlobRange(const Napi::CallbackInfo& info);

// warmUp(threads): each of `threads` libuv pool threads does a verification of its own, so that a
// reader does not wait for a thread's first one (WarmUpWorker). Returns a Promise per job.
Napi::Value WarmUp(const Napi::CallbackInfo& info);

// raiseBackgroundThread(told): gives the pool thread of a running background job (one passed `told`,
// an Int32Array of 2) its own priority back, for a reader who now waits for that job.
Napi::Value RaiseBackgroundThread(const Napi::CallbackInfo& info);

// releaseBuffer(ab): detaches an ArrayBuffer (every view of it becomes empty) so that its memory is
// freed now. Chunk buffers live a few milliseconds, but once they outlive a scavenge only a full GC
// frees them, and V8 runs one only after some 64 MiB of such memory: the daemon's peak RSS was that
// much higher than what it held.
Napi::Value ReleaseBuffer(const Napi::CallbackInfo& info);

// lz4Compress(src, dst) and lz4Decompress(src, dst): one raw LZ4 block (nydus's lz4_block chunks), for
// the builder and the readers off the daemon's hot path (which decompresses in VerifyRunNative).
Napi::Value Lz4Compress(const Napi::CallbackInfo& info);
Napi::Value Lz4Decompress(const Napi::CallbackInfo& info);

}  // namespace fscache
