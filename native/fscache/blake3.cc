// BLAKE3 in portable C++ (see blake3.h). The input is split into 1 KiB chunks, each hashed in 64-byte
// blocks to a chaining value; the chaining values merge pairwise into a binary tree whose root is
// the digest. Chunk i counts i in its compressions; the last compression of the root node has ROOT.
#include "blake3.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace fscache {
namespace {

constexpr uint32_t kIv[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                             0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};
constexpr uint32_t kChunkStart = 1, kChunkEnd = 2, kParent = 4, kRoot = 8;
constexpr size_t kBlockLen = 64, kChunkLen = 1024;
// The greatest tree depth for a 64-bit length: one chaining value per level on the stack.
constexpr size_t kMaxDepth = 54;

// The message word order of each of the 7 rounds: the permutation (2,6,3,10,7,0,4,13,1,11,12,5,9,14,15,8)
// applied once more per round.
constexpr uint8_t kSchedule[7][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
    {3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
    {10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
    {12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
    {9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
    {11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13},
};

inline uint32_t Rotr(uint32_t w, int c) { return (w >> c) | (w << (32 - c)); }

inline uint32_t LoadLe(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

// One quarter-round on four state words held in locals. Rounds are unrolled with the schedule's
// indices as constants (Round<R>): the state stays in registers and each message word is one load
// at a fixed offset, no index table read. That is 1.4x the speed of a looped round on x86-64 and
// under QEMU's TCG alike (the kernel-test guest, where the 16-lane code is slower still).
#define QUARTER(a, b, c, d, x, y) \
  a = a + b + (x);                \
  d = Rotr(d ^ a, 16);            \
  c = c + d;                      \
  b = Rotr(b ^ c, 12);            \
  a = a + b + (y);                \
  d = Rotr(d ^ a, 8);             \
  c = c + d;                      \
  b = Rotr(b ^ c, 7);

struct State {
  uint32_t v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15;
};

// `m`: the block's 16 message words, an array or InputWords.
template <int R, typename Message>
__attribute__((always_inline)) inline void Round(State& t, const Message& m) {
  constexpr const uint8_t* s = kSchedule[R];
  QUARTER(t.v0, t.v4, t.v8, t.v12, m[s[0]], m[s[1]]);
  QUARTER(t.v1, t.v5, t.v9, t.v13, m[s[2]], m[s[3]]);
  QUARTER(t.v2, t.v6, t.v10, t.v14, m[s[4]], m[s[5]]);
  QUARTER(t.v3, t.v7, t.v11, t.v15, m[s[6]], m[s[7]]);
  QUARTER(t.v0, t.v5, t.v10, t.v15, m[s[8]], m[s[9]]);
  QUARTER(t.v1, t.v6, t.v11, t.v12, m[s[10]], m[s[11]]);
  QUARTER(t.v2, t.v7, t.v8, t.v13, m[s[12]], m[s[13]]);
  QUARTER(t.v3, t.v4, t.v9, t.v14, m[s[14]], m[s[15]]);
}

// A full block's message words read where the block lies (little-endian loads), not copied out first.
// Under QEMU's TCG (the kernel-test guest) every load and store goes through a software TLB: a copy
// of each block to the stack was a fifth of the memory accesses of its compression. Compress is
// inlined into the chunk loop as well (it was a call), so the chaining value stays in registers from
// block to block.
// Measured in the guest, 64 MiB hashed in 1 MiB inputs a chunk at a time on one thread, eight
// processes of each build in turn: 598-742 ms (median 667) -> 514-562 ms (528), where the BLAKE3
// team's portable C takes 562-605 ms; on the bench host 70 -> 65 ms. The bench's big image read cold
// in the guest, five daemons of each build in turn: nydusd's CPU 2.02 -> 1.88 s, the read 2.07 -> 1.96 s (medians).
struct InputWords {
  const uint8_t* p;
  uint32_t operator[](size_t i) const {
    uint32_t w;
    std::memcpy(&w, p + 4 * i, sizeof w);
    return w;
  }
};
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "InputWords reads little-endian words as they lie");

// The compression function, truncated to the 8 words a chaining value (or a 32-byte digest) needs.
template <typename Message>
__attribute__((always_inline)) inline void Compress(uint32_t cv[8], const Message& m, uint64_t counter, uint32_t block_len, uint32_t flags) {
  State t = {cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7], kIv[0], kIv[1], kIv[2], kIv[3],
             static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), block_len, flags};
  Round<0>(t, m);
  Round<1>(t, m);
  Round<2>(t, m);
  Round<3>(t, m);
  Round<4>(t, m);
  Round<5>(t, m);
  Round<6>(t, m);
  cv[0] = t.v0 ^ t.v8;
  cv[1] = t.v1 ^ t.v9;
  cv[2] = t.v2 ^ t.v10;
  cv[3] = t.v3 ^ t.v11;
  cv[4] = t.v4 ^ t.v12;
  cv[5] = t.v5 ^ t.v13;
  cv[6] = t.v6 ^ t.v14;
  cv[7] = t.v7 ^ t.v15;
}

// The chaining value of one chunk (1 to 1024 bytes; 0 only for empty input), ROOT on its last block when asked.
void ChunkCv(const uint8_t* in, size_t len, uint64_t counter, bool root, uint32_t cv[8]) {
  std::memcpy(cv, kIv, sizeof kIv);
  size_t blocks = len == 0 ? 1 : (len + kBlockLen - 1) / kBlockLen;
  for (size_t b = 0; b < blocks; b++) {
    size_t n = b + 1 < blocks ? kBlockLen : len - b * kBlockLen;
    uint32_t flags = (b == 0 ? kChunkStart : 0) | (b + 1 == blocks ? kChunkEnd | (root ? kRoot : 0) : 0);
    if (n == kBlockLen) {
      Compress(cv, InputWords{in + b * kBlockLen}, counter, static_cast<uint32_t>(n), flags);
      continue;
    }
    // The last block, short: zero-padded to 64 bytes.
    uint8_t block[kBlockLen] = {0};
    if (n) std::memcpy(block, in + b * kBlockLen, n);  // (empty input: `in` may be null)
    Compress(cv, InputWords{block}, counter, static_cast<uint32_t>(n), flags);
  }
}

// The chaining value of a parent node: the key (IV) compressing its children's chaining values.
void ParentCv(const uint32_t left[8], const uint32_t right[8], bool root, uint32_t out[8]) {
  uint32_t m[16];
  std::memcpy(m, left, 32);
  std::memcpy(m + 8, right, 32);
  std::memcpy(out, kIv, sizeof kIv);
  Compress(out, m, 0, kBlockLen, kParent | (root ? kRoot : 0));
}

// 16 chunks at once, one per vector lane (GCC vector extensions: AVX-512, AVX2 or SSE2 code, chosen
// at load time by target_clones): the bulk of any input larger than 16 KiB. Writes 16 chaining values.
typedef uint32_t Lanes __attribute__((vector_size(64)));
constexpr size_t kLanes = 16;

// A macro, not a function: a vector argument outside the clones would change the ABI per target.
#define RotrLanes(w, c) (((w) >> (c)) | ((w) << (32 - (c))))

#define LANES_G(a, b, c, d, x, y)        \
  v[a] = v[a] + v[b] + (x);              \
  v[d] = RotrLanes(v[d] ^ v[a], 16);     \
  v[c] = v[c] + v[d];                    \
  v[b] = RotrLanes(v[b] ^ v[c], 12);     \
  v[a] = v[a] + v[b] + (y);              \
  v[d] = RotrLanes(v[d] ^ v[a], 8);      \
  v[c] = v[c] + v[d];                    \
  v[b] = RotrLanes(v[b] ^ v[c], 7);

// The seven rounds of the compression function on `v` with message `m` (columns, then diagonals).
#define LANES_ROUNDS()                        \
  for (const uint8_t* s : kSchedule) {        \
    LANES_G(0, 4, 8, 12, m[s[0]], m[s[1]]);   \
    LANES_G(1, 5, 9, 13, m[s[2]], m[s[3]]);   \
    LANES_G(2, 6, 10, 14, m[s[4]], m[s[5]]);  \
    LANES_G(3, 7, 11, 15, m[s[6]], m[s[7]]);  \
    LANES_G(0, 5, 10, 15, m[s[8]], m[s[9]]);  \
    LANES_G(1, 6, 11, 12, m[s[10]], m[s[11]]); \
    LANES_G(2, 7, 8, 13, m[s[12]], m[s[13]]);  \
    LANES_G(3, 4, 9, 14, m[s[14]], m[s[15]]);  \
  }

__attribute__((target_clones("avx512f", "avx2", "default")))
void Chunks16(const uint8_t* in, uint64_t counter, uint32_t (*cvs)[8]) {
  Lanes cv[8], counter_lo, counter_hi;
  for (int i = 0; i < 8; i++) cv[i] = Lanes{} + kIv[i];
  for (size_t l = 0; l < kLanes; l++) {
    counter_lo[l] = static_cast<uint32_t>(counter + l);
    counter_hi[l] = static_cast<uint32_t>((counter + l) >> 32);
  }
  for (size_t b = 0; b < kChunkLen / kBlockLen; b++) {
    Lanes m[16];
    for (size_t l = 0; l < kLanes; l++) {
      const uint8_t* p = in + l * kChunkLen + b * kBlockLen;
      for (int w = 0; w < 16; w++) m[w][l] = LoadLe(p + 4 * w);
    }
    uint32_t flags = (b == 0 ? kChunkStart : 0) | (b + 1 == kChunkLen / kBlockLen ? kChunkEnd : 0);
    Lanes v[16] = {cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7],
                   Lanes{} + kIv[0], Lanes{} + kIv[1], Lanes{} + kIv[2], Lanes{} + kIv[3],
                   counter_lo, counter_hi, Lanes{} + static_cast<uint32_t>(kBlockLen), Lanes{} + flags};
    LANES_ROUNDS();
    for (int i = 0; i < 8; i++) cv[i] = v[i] ^ v[i + 8];
  }
  for (size_t l = 0; l < kLanes; l++) {
    for (int i = 0; i < 8; i++) cvs[l][i] = cv[i][l];
  }
}

// 16 parent nodes at once: the chaining values of pairs `cvs[2l]`, `cvs[2l + 1]` (a parent's 64-byte
// block is its two children side by side) into `out[l]`. Every input is loaded before any output is
// stored, so `out` may be `cvs` itself (each level of a tree is reduced in place).
__attribute__((target_clones("avx512f", "avx2", "default")))
void Parents16(const uint32_t (*cvs)[8], uint32_t (*out)[8]) {
  Lanes m[16];
  for (size_t l = 0; l < kLanes; l++) {
    for (int w = 0; w < 16; w++) m[w][l] = cvs[2 * l + w / 8][w % 8];
  }
  Lanes v[16] = {Lanes{} + kIv[0], Lanes{} + kIv[1], Lanes{} + kIv[2], Lanes{} + kIv[3],
                 Lanes{} + kIv[4], Lanes{} + kIv[5], Lanes{} + kIv[6], Lanes{} + kIv[7],
                 Lanes{} + kIv[0], Lanes{} + kIv[1], Lanes{} + kIv[2], Lanes{} + kIv[3],
                 Lanes{}, Lanes{}, Lanes{} + static_cast<uint32_t>(kBlockLen), Lanes{} + kParent};
  LANES_ROUNDS();
  for (size_t l = 0; l < kLanes; l++) {
    for (int i = 0; i < 8; i++) out[l][i] = v[i][l] ^ v[i + 8][l];
  }
}

// The chunks of a subtree: at most this many (1 MiB of input), their chaining values on the stack.
constexpr size_t kSubtreeChunks = 1024;

// The chaining values of the chunks of `in` (`len` bytes, 1 to kSubtreeChunks chunks, all full but
// the last), the first counted `counter`: with `lanes`, 16 at a time while 16 full ones remain.
void ChunkCvs(const uint8_t* in, size_t len, uint64_t counter, uint32_t (*cvs)[8], bool lanes) {
  size_t full = len / kChunkLen, i = 0;
  if (lanes) for (; i + kLanes <= full; i += kLanes) Chunks16(in + i * kChunkLen, counter + i, cvs + i);
  // The rest one at a time: fewer than 16 full chunks, and the last.
  for (size_t at = i * kChunkLen; at < len; at += kChunkLen, i++) ChunkCv(in + at, std::min(kChunkLen, len - at), counter + i, false, cvs[i]);
}

// The root of a tree over `n` >= 2 chaining values (a left-complete binary tree, as BLAKE3's is),
// reduced a level at a time in place: pairs merge into parents (16 at a time), an odd last one goes
// up as it is. Pairing level by level builds the same tree as BLAKE3's stack of complete subtrees
// merged right to left. `root`: the last merge has ROOT (the tree is the whole input's).
void ReduceCvs(uint32_t (*cvs)[8], size_t n, bool root, uint32_t out[8], bool lanes) {
  while (n > 2) {
    size_t pairs = n / 2, j = 0;
    if (lanes) for (; j + kLanes <= pairs; j += kLanes) Parents16(cvs + 2 * j, cvs + j);
    for (; j < pairs; j++) ParentCv(cvs[2 * j], cvs[2 * j + 1], false, cvs[j]);
    if (n % 2) std::memcpy(cvs[pairs], cvs[n - 1], sizeof cvs[0]);
    n = pairs + n % 2;
  }
  ParentCv(cvs[0], cvs[1], root, out);
}

void Digest(const uint8_t* input, size_t len, uint8_t out[kBlake3DigestSize], bool lanes) {
  uint32_t cv[8];
  if (len <= kChunkLen) {
    ChunkCv(input, len, 0, true, cv);
  } else {
    // Whole subtrees of kSubtreeChunks while more than one remains after them: each reduced to its
    // chaining value and pushed on a stack, merged as BLAKE3 merges a chunk's (as many merges as
    // the count of subtrees done has trailing zero bits). The rest (1 to kSubtreeChunks chunks)
    // is reduced to one value, merged with the stack from its top down; the last merge is the root.
    static_assert(kSubtreeChunks % kLanes == 0, "subtrees are whole batches");
    constexpr size_t kSubtreeLen = kSubtreeChunks * kChunkLen;
    uint32_t stack[kMaxDepth][8];
    size_t depth = 0, pos = 0;
    uint64_t subtrees = 0;
    uint32_t cvs[kSubtreeChunks][8];
    for (; len - pos > kSubtreeLen; pos += kSubtreeLen) {
      ChunkCvs(input + pos, kSubtreeLen, pos / kChunkLen, cvs, lanes);
      ReduceCvs(cvs, kSubtreeChunks, false, cv, lanes);
      for (uint64_t done = ++subtrees; (done & 1) == 0; done >>= 1) ParentCv(stack[--depth], cv, false, cv);
      std::memcpy(stack[depth++], cv, sizeof cv);
    }
    size_t rest = len - pos, n = (rest + kChunkLen - 1) / kChunkLen;
    ChunkCvs(input + pos, rest, pos / kChunkLen, cvs, lanes);
    if (n == 1) std::memcpy(cv, cvs[0], sizeof cv);
    else ReduceCvs(cvs, n, depth == 0, cv, lanes);
    while (depth > 0) {
      depth--;
      ParentCv(stack[depth], cv, depth == 0, cv);
    }
  }
  for (int i = 0; i < 8; i++) {
    out[4 * i] = static_cast<uint8_t>(cv[i]);
    out[4 * i + 1] = static_cast<uint8_t>(cv[i] >> 8);
    out[4 * i + 2] = static_cast<uint8_t>(cv[i] >> 16);
    out[4 * i + 3] = static_cast<uint8_t>(cv[i] >> 24);
  }
}

// Whether the 16-lane code is the faster here. It is on x86-64 CPUs (on the bench host 4.7 GB/s with
// AVX-512, 0.9 GB/s a chunk at a time), not under an emulator that runs vector instructions through
// helpers: QEMU's TCG (the kernel-test guest) hashes 59 MB/s with its AVX2 and 90 MB/s a chunk at a
// time (4- and 8-lane SSE4.1/AVX2 code with real transposes did no better there). So both are timed
// once, on 128 KiB, as the kernel times its xor and RAID-6 routines at boot, and the faster is kept.
// NYDUS_BLAKE3=lanes or =chunks decides instead (tests).
bool UseLanes() {
  static const bool lanes = [] {
    const char* forced = std::getenv("NYDUS_BLAKE3");
    if (forced && std::strcmp(forced, "lanes") == 0) return true;
    if (forced && std::strcmp(forced, "chunks") == 0) return false;
    std::vector<uint8_t> sample(128 * kChunkLen);
    for (size_t i = 0; i < sample.size(); i++) sample[i] = static_cast<uint8_t>(i * 131 + (i >> 9));
    uint8_t digest[kBlake3DigestSize];
    auto best = [&](bool lanes) {
      auto t0 = std::chrono::steady_clock::now();
      Digest(sample.data(), sample.size(), digest, lanes);
      return std::chrono::steady_clock::now() - t0;
    };
    // Each timed five times, in turn: the least of each (a preempted run counts for nothing).
    auto with = best(true), without = best(false);
    for (int round = 0; round < 4; round++) {
      with = std::min(with, best(true));
      without = std::min(without, best(false));
    }
    return with <= without;
  }();
  return lanes;
}

}  // namespace

void Blake3(const uint8_t* input, size_t len, uint8_t out[kBlake3DigestSize]) { Digest(input, len, out, UseLanes()); }

bool Blake3UsesLanes() { return UseLanes(); }

}  // namespace fscache
