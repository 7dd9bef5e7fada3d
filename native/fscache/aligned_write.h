// Writing data into an OPEN's anonymous fd. That fd is O_DIRECT on the cache file, so the memory,
// the offset and the length must be block aligned: the bytes are copied into a 4096-aligned buffer
// zero-padded to a multiple of 4096, then pwrite(2)n.
//
// Why a worker (napi_async_work, libuv thread pool) and a Promise rather than a synchronous call:
// an O_DIRECT write bypasses the page cache and returns only when the device has the data, often
// hundreds of microseconds to milliseconds, during which a synchronous call would stall every other
// request of the daemon (fetches, decompression, further READs the kernel issues in parallel for
// readahead). A pool hop costs some 10-30 us, small against that, and lets writes overlap. The copy
// is done on the worker too, like node:fs reads a Buffer off-thread: the caller must not modify the
// buffer until the Promise settles. Aligned buffers are pooled (several writes are in flight at
// once, so one shared buffer would not do), and no allocation or page faulting happens per write.
// The pool has 4 threads by default, shared with node:fs; a busy daemon raises UV_THREADPOOL_SIZE.
#pragma once

#include <napi.h>

#include <cstddef>

namespace fscache {

// The cache file's O_DIRECT granularity (a page): offsets, lengths and memory of its writes.
constexpr size_t kCacheWriteAlign = 4096;

inline size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Page-aligned buffers shared by the pool threads' jobs (writeAligned's padded copies,
// verifyBlobRange's stored bytes and output): a buffer of at least `size` bytes and its capacity, or
// nullptr (ENOMEM); give it back with its capacity once the job is done with it.
void* AcquireAlignedBuffer(size_t size, size_t* capacity);
void ReleaseAlignedBuffer(void* buffer, size_t capacity);

// JS: writeAligned(fd: number, data: Uint8Array, offset: number): Promise<void>
// `offset` must be a multiple of 4096 (RangeError otherwise, thrown synchronously).
Napi::Value WriteAligned(const Napi::CallbackInfo& info);

}  // namespace fscache
