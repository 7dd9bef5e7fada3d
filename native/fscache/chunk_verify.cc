#include "chunk_verify.h"

#include <openssl/evp.h>
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "blake3.h"

namespace fscache {
namespace {

// A run's layout: these numbers per chunk, in this order (src/blob/verify.ts, RUN_*).
constexpr size_t kStoredOffset = 0, kStoredSize = 1, kOutOffset = 2, kOutSize = 3, kCompressed = 4, kFields = 5;
enum Compressor : uint32_t { kNone = 0, kZstd = 1 };
enum Digester : uint32_t { kBlake3 = 0, kSha256 = 1 };
constexpr size_t kDigestSize = 32;

struct ChunkPlace {
  size_t stored_offset, stored_size, out_offset, out_size;
  bool compressed;
};

// One decompression context per pool thread, made on its first chunk and kept for the process' life.
ZSTD_DCtx* ThreadDctx() {
  thread_local ZSTD_DCtx* dctx = ZSTD_createDCtx();
  return dctx;
}

std::optional<std::string> VerifyOne(const uint8_t* stored, uint8_t* out, const ChunkPlace& c, Compressor compressor,
                                     Digester digester, const uint8_t* digest) {
  const uint8_t* src = stored + c.stored_offset;
  uint8_t* dst = out + c.out_offset;
  if (c.compressed) {
    if (compressor != kZstd) return "chunk is marked compressed but the compressor is none";
    ZSTD_DCtx* dctx = ThreadDctx();
    if (!dctx) return "zstd decompression failed: out of memory";
    size_t n = ZSTD_decompressDCtx(dctx, dst, c.out_size, src, c.stored_size);
    if (ZSTD_isError(n)) return std::string("zstd decompression failed: ") + ZSTD_getErrorName(n);
    if (n != c.out_size) return "decompressed to " + std::to_string(n) + " bytes, expected " + std::to_string(c.out_size);
  } else {
    if (c.stored_size != c.out_size) return std::to_string(c.stored_size) + " bytes, expected " + std::to_string(c.out_size);
    std::memcpy(dst, src, c.out_size);
  }
  if (!digest) return std::nullopt;
  uint8_t got[kDigestSize];
  if (digester == kBlake3) {
    Blake3(dst, c.out_size, got);
  } else {
    unsigned int len = 0;
    if (EVP_Digest(dst, c.out_size, got, &len, EVP_sha256(), nullptr) != 1 || len != kDigestSize) return "sha256 failed";
  }
  if (std::memcmp(got, digest, kDigestSize) != 0) return "digest mismatch, refusing corrupt data";
  return std::nullopt;
}

class VerifyRunWorker : public Napi::AsyncWorker {
 public:
  VerifyRunWorker(Napi::Env env, Napi::Uint8Array stored, Napi::Uint8Array digests, Napi::Uint8Array out,
                  std::vector<ChunkPlace> places, Compressor compressor, Digester digester, size_t digest_size)
      : Napi::AsyncWorker(env, "nydus:verifyRun"),
        deferred_(Napi::Promise::Deferred::New(env)),
        stored_(stored.Data()), digests_(digests.Data()), out_(out.Data()), out_size_(out.ByteLength()),
        places_(std::move(places)), compressor_(compressor), digester_(digester), digest_size_(digest_size),
        errors_(places_.size()) {
    // The buffers stay alive (and in place) while the pool works on them.
    keep_ = Napi::Persistent(Napi::Object::New(env));
    keep_.Set("stored", stored);
    keep_.Set("digests", digests);
    keep_.Set("out", out);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    ZeroGaps();
    for (size_t i = 0; i < places_.size(); i++) {
      const uint8_t* digest = digest_size_ ? digests_ + i * digest_size_ : nullptr;
      errors_[i] = VerifyOne(stored_, out_, places_[i], compressor_, digester_, digest);
      // Never handed out: the bytes of a chunk that failed are zeroed.
      if (errors_[i]) std::memset(out_ + places_[i].out_offset, 0, places_[i].out_size);
    }
  }

  // What no chunk covers (block padding between chunks in the cache file) is zeros: the output comes
  // uninitialized, and padding is written into the cache file with the chunks around it.
  void ZeroGaps() {
    std::vector<std::pair<size_t, size_t>> covered;
    covered.reserve(places_.size());
    for (const ChunkPlace& c : places_) covered.emplace_back(c.out_offset, c.out_offset + c.out_size);
    std::sort(covered.begin(), covered.end());
    size_t at = 0;
    for (const auto& [from, to] : covered) {
      if (from > at) std::memset(out_ + at, 0, from - at);
      at = std::max(at, to);
    }
    if (out_size_ > at) std::memset(out_ + at, 0, out_size_ - at);
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array result = Napi::Array::New(env, errors_.size());
    for (size_t i = 0; i < errors_.size(); i++) {
      result.Set(i, errors_[i] ? Napi::Value(Napi::String::New(env, *errors_[i])) : env.Null());
    }
    deferred_.Resolve(result);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference keep_;
  const uint8_t* stored_;
  const uint8_t* digests_;
  uint8_t* out_;
  size_t out_size_;
  std::vector<ChunkPlace> places_;
  Compressor compressor_;
  Digester digester_;
  size_t digest_size_;
  std::vector<std::optional<std::string>> errors_;
};

size_t Whole(Napi::Env env, double v, const char* what) {
  if (!(v >= 0) || v > 9007199254740991.0 || std::floor(v) != v) {
    throw Napi::RangeError::New(env, std::string("verifyRunNative: ") + what + " is not a whole number of bytes");
  }
  return static_cast<size_t>(v);
}

}  // namespace

// verifyRunNative(stored, layout, digests, digestSize, out, compressor, digester): Promise<(string|null)[]>
Napi::Value VerifyRunNative(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "verifyRunNative(stored: Uint8Array, layout: Float64Array, digests: Uint8Array, digestSize: number, out: Uint8Array, compressor: 0 | 1, digester: 0 | 1)";
  if (info.Length() != 7 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsNumber() || !info[4].IsTypedArray() || !info[5].IsNumber() || !info[6].IsNumber()) {
    throw Napi::TypeError::New(env, usage);
  }
  auto stored = info[0].As<Napi::Uint8Array>();
  auto layout = info[1].As<Napi::Float64Array>();
  auto digests = info[2].As<Napi::Uint8Array>();
  auto out = info[4].As<Napi::Uint8Array>();
  if (stored.TypedArrayType() != napi_uint8_array || digests.TypedArrayType() != napi_uint8_array ||
      out.TypedArrayType() != napi_uint8_array || layout.TypedArrayType() != napi_float64_array) {
    throw Napi::TypeError::New(env, usage);
  }
  uint32_t compressor = info[5].As<Napi::Number>().Uint32Value();
  uint32_t digester = info[6].As<Napi::Number>().Uint32Value();
  size_t digest_size = Whole(env, info[3].As<Napi::Number>().DoubleValue(), "digestSize");
  if (compressor > kZstd || digester > kSha256) throw Napi::RangeError::New(env, "verifyRunNative: unknown compressor or digester");
  if (digest_size != 0 && digest_size != kDigestSize) throw Napi::RangeError::New(env, "verifyRunNative: digests are 32 bytes");
  if (layout.ElementLength() % kFields != 0) throw Napi::RangeError::New(env, "verifyRunNative: layout is not whole chunks");
  size_t count = layout.ElementLength() / kFields;
  if (digests.ByteLength() < count * digest_size) throw Napi::RangeError::New(env, "verifyRunNative: fewer digests than chunks");
  // Every chunk within both buffers: the pool thread trusts these bounds.
  std::vector<ChunkPlace> places(count);
  for (size_t i = 0; i < count; i++) {
    const double* f = layout.Data() + i * kFields;
    ChunkPlace& c = places[i];
    c.stored_offset = Whole(env, f[kStoredOffset], "a stored offset");
    c.stored_size = Whole(env, f[kStoredSize], "a stored size");
    c.out_offset = Whole(env, f[kOutOffset], "an output offset");
    c.out_size = Whole(env, f[kOutSize], "an output size");
    c.compressed = f[kCompressed] != 0;
    if (c.stored_offset > stored.ByteLength() || c.stored_size > stored.ByteLength() - c.stored_offset ||
        c.out_offset > out.ByteLength() || c.out_size > out.ByteLength() - c.out_offset) {
      throw Napi::RangeError::New(env, "verifyRunNative: chunk " + std::to_string(i) + " lies outside its buffers");
    }
  }
  auto* worker = new VerifyRunWorker(env, stored, digests, out, std::move(places), static_cast<Compressor>(compressor),
                                     static_cast<Digester>(digester), digest_size);
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

Napi::Value ReleaseBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "releaseBuffer(ab: ArrayBuffer)");
  NAPI_THROW_IF_FAILED(env, napi_detach_arraybuffer(env, info[0]), Napi::Value());
  return env.Undefined();
}

}  // namespace fscache
