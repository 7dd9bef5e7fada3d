// BLAKE3 (the default chunk digest of Nydus images), 32-byte output, no key: what chunk verification
// on the libuv pool needs, in portable C++ (16 chunks at a time in vector lanes, or one at a time
// where that is faster: timed once per process, see UseLanes in blake3.cc). Written from the BLAKE3 specification
// (https://github.com/BLAKE3-team/BLAKE3-specs); checked against the @napi-rs/blake-hash binding the
// builder uses (test/chunk-verify-native.test.ts).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fscache {

constexpr size_t kBlake3DigestSize = 32;

void Blake3(const uint8_t* input, size_t len, uint8_t out[kBlake3DigestSize]);

// Whether Blake3 hashes 16 chunks at a time in vector lanes here (timed at the first call of either:
// best made while nothing else runs, as the pool's warm-up does).
bool Blake3UsesLanes();

}  // namespace fscache
