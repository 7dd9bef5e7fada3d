#include "chunk_verify.h"

#include <openssl/evp.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <lz4.h>
#include <zstd.h>

#include <cerrno>
#include <cstdint>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "aligned_write.h"
#include "blake3.h"
#include "errno_error.h"

namespace fscache {
namespace {

// A run's layout: these numbers per chunk, in this order (src/blob/verify.ts, RUN_*).
constexpr size_t kStoredOffset = 0, kStoredSize = 1, kOutOffset = 2, kOutSize = 3, kCompressed = 4, kFields = 5;
enum Compressor : uint32_t { kNone = 0, kZstd = 1, kLz4Block = 2 };
enum Digester : uint32_t { kBlake3 = 0, kSha256 = 1 };
constexpr size_t kDigestSize = 32;
// Where a run verified as laid out in the cache file goes: its output's byte 0 at `offset` of `fd`.
struct WriteTarget {
  int fd;
  off_t offset;
};

struct ChunkPlace {
  size_t stored_offset, stored_size, out_offset, out_size;
  bool compressed;
};

// A run's stored bytes as a range of a blob file, read by the pool thread itself (verifyBlobRange).
struct BlobRange {
  int fd;
  off_t offset;
  size_t size;
};

// The most a verifyBlobRange job reads or writes.
constexpr size_t kMaxBlobRangeBytes = 64 << 20;

// One decompression context per pool thread, made on its first chunk and kept for the process' life.
ZSTD_DCtx* ThreadDctx() {
  thread_local ZSTD_DCtx* dctx = ZSTD_createDCtx();
  return dctx;
}

// The digest of a chunk's `size` bytes at `data` against `digest` (none: nothing to check).
std::optional<std::string> VerifyDigest(const uint8_t* data, size_t size, Digester digester, const uint8_t* digest) {
  if (!digest) return std::nullopt;
  uint8_t got[kDigestSize];
  if (digester == kBlake3) {
    Blake3(data, size, got);
  } else {
    unsigned int len = 0;
    if (EVP_Digest(data, size, got, &len, EVP_sha256(), nullptr) != 1 || len != kDigestSize) return "sha256 failed";
  }
  if (std::memcmp(got, digest, kDigestSize) != 0) return "digest mismatch, refusing corrupt data";
  return std::nullopt;
}

// `in_place`: an uncompressed chunk's stored bytes were read straight into its place in `out`.
std::optional<std::string> VerifyOne(const uint8_t* stored, uint8_t* out, const ChunkPlace& c, Compressor compressor,
                                     Digester digester, const uint8_t* digest, bool in_place = false) {
  const uint8_t* src = stored + c.stored_offset;
  uint8_t* dst = out + c.out_offset;
  if (c.compressed) {
    if (compressor == kNone) return "chunk is marked compressed but the compressor is none";
    if (compressor == kLz4Block) {
      // A raw LZ4 block (nydus's lz4_block), which must fill the chunk exactly.
      if (c.stored_size > INT32_MAX || c.out_size > INT32_MAX) return "chunk too large for lz4";
      int n = LZ4_decompress_safe(reinterpret_cast<const char*>(src), reinterpret_cast<char*>(dst), static_cast<int>(c.stored_size),
                                  static_cast<int>(c.out_size));
      if (n < 0) return "lz4 decompression failed: corrupt block";
      if (static_cast<size_t>(n) != c.out_size) return "decompressed to " + std::to_string(n) + " bytes, expected " + std::to_string(c.out_size);
      return VerifyDigest(dst, c.out_size, digester, digest);
    }
    ZSTD_DCtx* dctx = ThreadDctx();
    if (!dctx) return "zstd decompression failed: out of memory";
    size_t n = ZSTD_decompressDCtx(dctx, dst, c.out_size, src, c.stored_size);
    if (ZSTD_isError(n)) return std::string("zstd decompression failed: ") + ZSTD_getErrorName(n);
    if (n != c.out_size) return "decompressed to " + std::to_string(n) + " bytes, expected " + std::to_string(c.out_size);
  } else {
    if (c.stored_size != c.out_size) return std::to_string(c.stored_size) + " bytes, expected " + std::to_string(c.out_size);
    if (!in_place) std::memcpy(dst, src, c.out_size);
  }
  return VerifyDigest(dst, c.out_size, digester, digest);
}

// A background job (the rest of a blob, prefetched) runs at this nice value on its pool thread: it
// takes a CPU nobody else wants, and yields it at once to a container that starts (an exec, a dynamic
// link) and to the jobs a reader waits for. Back to the thread's own value when the job ends.
constexpr int kBackgroundNice = 19;
// Set once a thread could not be given its own priority back (no CAP_SYS_NICE): from then on no job
// lowers one, so that a reader's job never runs on a thread left at kBackgroundNice.
std::atomic<bool> g_background_nice_off{false};

// Where a background job's thread is told to the daemon while it runs lowered: {state, its own nice}
// (an Int32Array of 2 from JS), so that a reader who comes to wait for the job can give the thread
// its priority back (raiseBackgroundThread) rather than wait behind every task at nice 0. The state:
// 0 the job has not lowered its thread (yet); a tid, lowered; kRaising, being raised; kRaised, raised
// (a job not yet lowered then never lowers itself). Each change is one compare-and-swap, so that a
// raise is never lost to a job that starts late, nor lands on the thread's next job.
constexpr int32_t kRaising = -1, kRaised = -2;
struct LoweredThread {
  int32_t* slot = nullptr;  // [0] the state, [1] the nice to go back to
};

// `v` as a LoweredThread's slot when it is one (an Int32Array of 2), else null.
int32_t* ToldSlot(const Napi::Value& v) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array || v.As<Napi::Int32Array>().ElementLength() != 2) return nullptr;
  return v.As<Napi::Int32Array>().Data();
}

class BackgroundPriority {
 public:
  BackgroundPriority(bool background, LoweredThread told) : told_(told) {
    if (!background || g_background_nice_off.load(std::memory_order_relaxed)) return;
    if (told_.slot && __atomic_load_n(&told_.slot[0], __ATOMIC_ACQUIRE) != 0) return;  // raised before it ran
    tid_ = static_cast<id_t>(syscall(SYS_gettid));
    errno = 0;
    int prev = getpriority(PRIO_PROCESS, tid_);
    if (errno != 0 || prev >= kBackgroundNice) return;
    if (told_.slot) __atomic_store_n(&told_.slot[1], prev, __ATOMIC_RELAXED);
    if (setpriority(PRIO_PROCESS, tid_, kBackgroundNice) != 0) return;
    prev_ = prev;
    lowered_ = true;
    int32_t expected = 0;
    if (told_.slot && !__atomic_compare_exchange_n(&told_.slot[0], &expected, static_cast<int32_t>(tid_), false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      // Raised meanwhile: back at once.
      Restore();
    }
  }
  ~BackgroundPriority() {
    if (!lowered_) return;
    if (told_.slot) {
      int32_t expected = static_cast<int32_t>(tid_);
      if (!__atomic_compare_exchange_n(&told_.slot[0], &expected, 0, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        // A raise has the tid: it ends before this thread may take (and lower itself for) another job.
        while (__atomic_load_n(&told_.slot[0], __ATOMIC_ACQUIRE) == kRaising) sched_yield();
      }
    }
    Restore();
  }
  BackgroundPriority(const BackgroundPriority&) = delete;
  BackgroundPriority& operator=(const BackgroundPriority&) = delete;

 private:
  void Restore() {
    lowered_ = false;
    if (setpriority(PRIO_PROCESS, tid_, prev_) != 0) g_background_nice_off.store(true, std::memory_order_relaxed);
  }

  LoweredThread told_;
  id_t tid_ = 0;
  int prev_ = 0;
  bool lowered_ = false;
};

class VerifyRunWorker : public Napi::AsyncWorker {
 public:
  // `out` is where the chunks go (with a target: page-aligned, a whole number of pages); `out_buffer`,
  // the buffer that holds it, kept alive. With a `source` the stored bytes are read from it, and with
  // no `out` (null, `out_buffer` undefined) the output is a pooled one (AcquireAlignedBuffer): only the
  // cache file gets the chunks (a target is needed then). No `out` without a `source`.
  VerifyRunWorker(Napi::Env env, Napi::Value stored_buffer, const uint8_t* stored, std::optional<BlobRange> source,
                  Napi::Uint8Array digests, Napi::Value out_buffer, uint8_t* out,
                  size_t out_size, std::vector<ChunkPlace> places, Compressor compressor, Digester digester,
                  size_t digest_size, std::optional<WriteTarget> target, size_t base, bool background,
                  Napi::Value told_buffer, LoweredThread told)
      : Napi::AsyncWorker(env, "nydus:verifyRun"),
        deferred_(Napi::Promise::Deferred::New(env)),
        stored_(stored), source_(source), digests_(digests.Data()), out_(out), out_size_(out_size),
        places_(std::move(places)), compressor_(compressor), digester_(digester), digest_size_(digest_size),
        target_(target), base_(base), background_(background), told_(told), errors_(places_.size()) {
    // The buffers stay alive (and in place) while the pool works on them.
    keep_ = Napi::Persistent(Napi::Object::New(env));
    keep_.Set("stored", stored_buffer);
    keep_.Set("digests", digests);
    keep_.Set("out", out_buffer);
    keep_.Set("told", told_buffer);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    BackgroundPriority priority(background_, told_);
    if (source_) {
      // The job's buffers (AcquireAlignedBuffer) go back when it ends, whichever way.
      struct Lease {
        size_t capacity = 0;
        uint8_t* data;
        explicit Lease(size_t size) : data(static_cast<uint8_t*>(AcquireAlignedBuffer(size, &capacity))) {}
        ~Lease() {
          if (data) ReleaseAlignedBuffer(data, capacity);
        }
      } in(source_->size), out(out_size_);
      if (!in.data || !out.data) {
        read_errno_ = ENOMEM;
        read_error_ = "buffers of " + std::to_string(source_->size) + " and " + std::to_string(out_size_) + " bytes";
        return;
      }
      out_ = out.data;
      if (!ReadSource(in.data)) {
        out_ = nullptr;
        return;
      }
      Verify();
      out_ = nullptr;
      stored_ = nullptr;
      return;
    }
    Verify();
  }

  void Verify() {
    ZeroGaps();
    for (size_t i = 0; i < places_.size(); i++) {
      const uint8_t* digest = digest_size_ ? digests_ + i * digest_size_ : nullptr;
      errors_[i] = VerifyOne(stored_, out_, places_[i], compressor_, digester_, digest, !in_place_.empty() && in_place_[i]);
      // Never handed out: the bytes of a chunk that failed are zeroed.
      if (errors_[i]) std::memset(out_ + places_[i].out_offset, 0, places_[i].out_size);
    }
    if (target_) WriteGood();
  }

  // The stored bytes from the blob file: an uncompressed chunk's straight into its place in the output
  // (in_place_; it is then only hashed, not copied: the bench's big image prefetched whole on the host
  // took the worker 567 ms of CPU against 592, medians of 5), the rest into
  // `in` at their offsets. Stored ranges that overlap (one stored chunk for two) are all read into
  // `in`. False (read_errno_ set) when they cannot all be read.
  bool ReadSource(uint8_t* in) {
    std::vector<size_t> order(places_.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return places_[a].stored_offset < places_[b].stored_offset; });
    std::vector<iovec> iov;
    iov.reserve(places_.size() * 2 + 1);
    in_place_.assign(places_.size(), false);
    size_t pos = 0;
    bool scatter = true;
    for (size_t i : order) {
      const ChunkPlace& c = places_[i];
      if (c.stored_offset < pos) {
        scatter = false;
        break;
      }
      if (c.stored_offset > pos) iov.push_back({in + pos, c.stored_offset - pos});
      if (!c.compressed && c.stored_size == c.out_size && c.out_size > 0) {
        iov.push_back({out_ + c.out_offset, c.stored_size});
        in_place_[i] = true;
      } else if (c.stored_size > 0) {
        iov.push_back({in + c.stored_offset, c.stored_size});
      }
      pos = c.stored_offset + c.stored_size;
    }
    if (scatter && pos < source_->size) iov.push_back({in + pos, source_->size - pos});
    if (!scatter) {
      in_place_.assign(places_.size(), false);
      iov.assign(1, iovec{in, source_->size});
    }
    // preadv in batches of at most IOV_MAX, each read on where the last stopped (a short read too).
    constexpr size_t kIovMax = 1024;
    size_t at = 0;  // bytes read so far
    for (size_t first = 0; first < iov.size();) {
      size_t n_iov = std::min(kIovMax, iov.size() - first);
      off_t offset = source_->offset + static_cast<off_t>(at);
      ssize_t n = RetryOnEintr([&] { return preadv(source_->fd, iov.data() + first, static_cast<int>(n_iov), offset); });
      if (n <= 0) {
        read_errno_ = n < 0 ? errno : EIO;
        read_error_ = n < 0 ? std::to_string(source_->size - at) + " bytes at " + std::to_string(offset)
                            : "the file ends at " + std::to_string(offset) + ", before the " + std::to_string(source_->size) + " bytes at " + std::to_string(source_->offset);
        return false;
      }
      at += static_cast<size_t>(n);
      // Past the iovecs read whole; a part-read one goes on from where it stopped.
      for (size_t left = static_cast<size_t>(n); left > 0;) {
        iovec& v = iov[first];
        if (left >= v.iov_len) {
          left -= v.iov_len;
          first++;
        } else {
          v.iov_base = static_cast<uint8_t*>(v.iov_base) + left;
          v.iov_len -= left;
          left = 0;
        }
      }
      while (first < iov.size() && iov[first].iov_len == 0) first++;
    }
    stored_ = in;
    return true;
  }

  // Writes the chunks that passed into the cache file, each stretch of them that follows one another
  // in one pwrite (a failed chunk is never written: the kernel would read its hole as data). The
  // places are the file's (offsets from the target's), in file order, each at a page boundary.
  void WriteGood() {
    size_t i = 0;
    while (i < places_.size()) {
      if (errors_[i]) {
        i++;
        continue;
      }
      size_t from = places_[i].out_offset;
      size_t to = RoundUp(from + places_[i].out_size, kCacheWriteAlign);
      for (i++; i < places_.size() && !errors_[i] && places_[i].out_offset == to; i++) {
        to = RoundUp(places_[i].out_offset + places_[i].out_size, kCacheWriteAlign);
      }
      for (size_t done = from; done < to;) {
        ssize_t n = RetryOnEintr([&] { return pwrite(target_->fd, out_ + done, to - done, target_->offset + static_cast<off_t>(done)); });
        if (n <= 0) {
          write_errno_ = n < 0 ? errno : EIO;
          write_error_ = std::to_string(to - from) + " bytes at " + std::to_string(target_->offset + static_cast<off_t>(from));
          return;
        }
        done += static_cast<size_t>(n);
      }
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
    Napi::Object outcome = Napi::Object::New(env);
    if (source_) {
      outcome.Set("readError", read_errno_ ? ErrnoError(env, read_errno_, "pread", "", "fd " + std::to_string(source_->fd) + ", " + read_error_).Value() : env.Null());
      if (read_errno_) {
        outcome.Set("errors", env.Null());
        outcome.Set("writeError", env.Null());
        return deferred_.Resolve(outcome);
      }
    }
    Napi::Array result = Napi::Array::New(env, errors_.size());
    for (size_t i = 0; i < errors_.size(); i++) {
      result.Set(i, errors_[i] ? Napi::Value(Napi::String::New(env, *errors_[i])) : env.Null());
    }
    if (!target_) return deferred_.Resolve(result);
    outcome.Set("errors", result);
    if (!source_) outcome.Set("base", Napi::Number::New(env, static_cast<double>(base_)));
    outcome.Set("writeError", write_errno_ ? ErrnoError(env, write_errno_, "pwrite", "", "fd " + std::to_string(target_->fd) + ", " + write_error_).Value() : env.Null());
    deferred_.Resolve(outcome);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference keep_;
  const uint8_t* stored_;
  std::optional<BlobRange> source_;
  const uint8_t* digests_;
  uint8_t* out_;
  size_t out_size_;
  std::vector<ChunkPlace> places_;
  Compressor compressor_;
  Digester digester_;
  size_t digest_size_;
  std::optional<WriteTarget> target_;
  size_t base_;  // where in the out buffer `out_` starts
  bool background_;  // runs at kBackgroundNice
  LoweredThread told_;
  std::vector<std::optional<std::string>> errors_;
  std::vector<bool> in_place_;  // per chunk: read straight into the output (ReadSource)
  int write_errno_ = 0;
  std::string write_error_;
  int read_errno_ = 0;  // the source or a buffer could not be had: nothing was verified
  std::string read_error_;
};

// A thread's first verification costs it milliseconds its later ones do not (its zstd context made,
// the code and the buffers' pages faulted in): measured on the bench host, a 1 MiB chunk's first
// decompression and digest 3-7 ms, later ones 0.3-0.6 ms. A container's first reads would wait for
// that on every pool thread in turn. A warm-up job per thread pays it before any read does.
class WarmUpWorker : public Napi::AsyncWorker {
 public:
  struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    size_t arrived = 0;
  };

  WarmUpWorker(Napi::Env env, std::shared_ptr<Gate> gate, size_t threads)
      : Napi::AsyncWorker(env, "nydus:warmUp"), deferred_(Napi::Promise::Deferred::New(env)), gate_(std::move(gate)), threads_(threads) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    // BLAKE3's code is chosen by timing it once (blake3.cc): done by the first job while the others
    // wait, so that they do not share the CPU with the timing.
    Blake3UsesLanes();
    // Each job holds its thread until all have one (or a moment passed: the pool may be busy), so
    // that they land on as many threads.
    {
      std::unique_lock<std::mutex> lock(gate_->mu);
      if (++gate_->arrived >= threads_) gate_->cv.notify_all();
      else gate_->cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return gate_->arrived >= threads_; });
    }
    static const std::vector<uint8_t> frame = [] {
      std::vector<uint8_t> text(kWarmUpBytes);
      for (size_t i = 0; i < text.size(); i++) text[i] = static_cast<uint8_t>("nydus warm-up text\n"[i % 19]);
      std::vector<uint8_t> out(ZSTD_compressBound(text.size()));
      size_t n = ZSTD_compress(out.data(), out.size(), text.data(), text.size(), 1);
      out.resize(ZSTD_isError(n) ? 0 : n);
      return out;
    }();
    size_t out_capacity = 0, in_capacity = 0;
    auto* out = static_cast<uint8_t*>(AcquireAlignedBuffer(kWarmUpBytes, &out_capacity));
    auto* in = static_cast<uint8_t*>(AcquireAlignedBuffer(kWarmUpBytes, &in_capacity));
    if (out && in && !frame.empty()) {
      std::memcpy(in, frame.data(), frame.size());
      ChunkPlace c{0, frame.size(), 0, kWarmUpBytes, true};
      VerifyOne(in, out, c, kZstd, kBlake3, nullptr);
      uint8_t digest[kDigestSize];
      Blake3(out, kWarmUpBytes, digest);
    }
    if (out) ReleaseAlignedBuffer(out, out_capacity);
    if (in) ReleaseAlignedBuffer(in, in_capacity);
  }

  // Resolves to whether BLAKE3 hashes in vector lanes here.
  void OnOK() override { deferred_.Resolve(Napi::Boolean::New(Env(), Blake3UsesLanes())); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  // A chunk of nydus-image's default size.
  static constexpr size_t kWarmUpBytes = 1 << 20;
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Gate> gate_;
  size_t threads_;
};

size_t Whole(Napi::Env env, double v, const char* what, const char* fn = "verifyRunNative") {
  if (!(v >= 0) || v > 9007199254740991.0 || std::floor(v) != v) {
    throw Napi::RangeError::New(env, std::string(fn) + ": " + what + " is not a whole number of bytes");
  }
  return static_cast<size_t>(v);
}

// The arguments both entry points share, checked.
struct RunArgs {
  Napi::Float64Array layout;
  Napi::Uint8Array digests;
  size_t digest_size;
  Compressor compressor;
  Digester digester;
};

RunArgs ParseRunArgs(Napi::Env env, const Napi::Value& layout_v, const Napi::Value& digests_v, const Napi::Value& digest_size_v,
                     const Napi::Value& compressor_v, const Napi::Value& digester_v, const char* fn) {
  auto layout = layout_v.As<Napi::Float64Array>();
  auto digests = digests_v.As<Napi::Uint8Array>();
  if (digests.TypedArrayType() != napi_uint8_array || layout.TypedArrayType() != napi_float64_array) {
    throw Napi::TypeError::New(env, std::string(fn) + ": layout is a Float64Array, digests a Uint8Array");
  }
  uint32_t compressor = compressor_v.As<Napi::Number>().Uint32Value();
  uint32_t digester = digester_v.As<Napi::Number>().Uint32Value();
  size_t digest_size = Whole(env, digest_size_v.As<Napi::Number>().DoubleValue(), "digestSize", fn);
  if (compressor > kLz4Block || digester > kSha256) throw Napi::RangeError::New(env, std::string(fn) + ": unknown compressor or digester");
  if (digest_size != 0 && digest_size != kDigestSize) throw Napi::RangeError::New(env, std::string(fn) + ": digests are 32 bytes");
  if (layout.ElementLength() % kFields != 0) throw Napi::RangeError::New(env, std::string(fn) + ": layout is not whole chunks");
  size_t count = layout.ElementLength() / kFields;
  if (digests.ByteLength() < count * digest_size) throw Napi::RangeError::New(env, std::string(fn) + ": fewer digests than chunks");
  return {layout, digests, digest_size, static_cast<Compressor>(compressor), static_cast<Digester>(digester)};
}

// Every chunk's place, within `stored_size` stored bytes and `out_size` output bytes (with `writes`,
// a page rounded: whole pages are written), in file order at page boundaries when it writes: the
// pool thread trusts these bounds.
std::vector<ChunkPlace> ParsePlaces(Napi::Env env, const Napi::Float64Array& layout, size_t stored_size, size_t out_size,
                                    bool writes, const char* fn) {
  size_t count = layout.ElementLength() / kFields;
  std::vector<ChunkPlace> places(count);
  for (size_t i = 0; i < count; i++) {
    const double* f = layout.Data() + i * kFields;
    ChunkPlace& c = places[i];
    c.stored_offset = Whole(env, f[kStoredOffset], "a stored offset", fn);
    c.stored_size = Whole(env, f[kStoredSize], "a stored size", fn);
    c.out_offset = Whole(env, f[kOutOffset], "an output offset", fn);
    c.out_size = Whole(env, f[kOutSize], "an output size", fn);
    c.compressed = f[kCompressed] != 0;
    size_t out_room = writes ? RoundUp(c.out_size, kCacheWriteAlign) : c.out_size;
    if (c.stored_offset > stored_size || c.stored_size > stored_size - c.stored_offset ||
        c.out_offset > out_size || out_room > out_size - c.out_offset) {
      throw Napi::RangeError::New(env, std::string(fn) + ": chunk " + std::to_string(i) + " lies outside its buffers");
    }
    if (writes && (c.out_offset % kCacheWriteAlign != 0 || (i > 0 && c.out_offset < places[i - 1].out_offset + places[i - 1].out_size))) {
      throw Napi::RangeError::New(env, std::string(fn) + ": chunk " + std::to_string(i) + " to write is not at a page boundary after the one before it");
    }
  }
  return places;
}

WriteTarget ParseTarget(Napi::Env env, const Napi::Value& fd_v, const Napi::Value& offset_v, const char* fn) {
  int fd = fd_v.As<Napi::Number>().Int32Value();
  size_t file_offset = Whole(env, offset_v.As<Napi::Number>().DoubleValue(), "fileOffset", fn);
  if (fd < 0 || file_offset % kCacheWriteAlign != 0) throw Napi::RangeError::New(env, std::string(fn) + ": a write needs an fd and a fileOffset that is a multiple of 4096");
  return WriteTarget{fd, static_cast<off_t>(file_offset)};
}

// An entry point's optional last argument: `background`, a boolean, or the Int32Array of 2 where a
// background job tells its thread (LoweredThread); `argc`: the arguments before it.
struct Background {
  bool on = false;
  Napi::Value buffer;
  LoweredThread told;
};

Background TrailingBackground(const Napi::CallbackInfo& info, size_t* argc) {
  Background b{false, info.Env().Undefined(), {}};
  *argc = info.Length();
  if (info.Length() == 0) return b;
  Napi::Value last = info[info.Length() - 1];
  if (last.IsBoolean()) {
    b.on = last.As<Napi::Boolean>().Value();
    *argc -= 1;
  } else if (int32_t* slot = ToldSlot(last)) {
    b.on = true;
    b.buffer = last;
    b.told.slot = slot;
    *argc -= 1;
  }
  return b;
}

}  // namespace

// verifyRunNative(stored, layout, digests, digestSize, out, compressor, digester[, fd, fileOffset][, background])
Napi::Value VerifyRunNative(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "verifyRunNative";
  const char* usage = "verifyRunNative(stored: Uint8Array, layout: Float64Array, digests: Uint8Array, digestSize: number, out: Uint8Array, compressor: 0 | 1, digester: 0 | 1[, fd: number, fileOffset: number][, background: boolean | Int32Array])";
  size_t argc;
  Background background = TrailingBackground(info, &argc);
  bool writes = argc == 9;
  if ((argc != 7 && !writes) || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsNumber() || !info[4].IsTypedArray() || !info[5].IsNumber() || !info[6].IsNumber() ||
      (writes && (!info[7].IsNumber() || !info[8].IsNumber()))) {
    throw Napi::TypeError::New(env, usage);
  }
  auto stored = info[0].As<Napi::Uint8Array>();
  auto out = info[4].As<Napi::Uint8Array>();
  if (stored.TypedArrayType() != napi_uint8_array || out.TypedArrayType() != napi_uint8_array) throw Napi::TypeError::New(env, usage);
  RunArgs run = ParseRunArgs(env, info[1], info[2], info[3], info[5], info[6], fn);
  std::optional<WriteTarget> target;
  uint8_t* out_data = out.Data();
  size_t out_size = out.ByteLength();
  size_t skip = 0;
  if (writes) {
    target = ParseTarget(env, info[7], info[8], fn);
    // The chunks go at the first page boundary of `out`, which has a page to spare for it.
    skip = (kCacheWriteAlign - reinterpret_cast<uintptr_t>(out_data) % kCacheWriteAlign) % kCacheWriteAlign;
    if (out_size < kCacheWriteAlign) throw Napi::RangeError::New(env, "verifyRunNative: a write needs a page more than its output");
    out_data += skip;
    out_size = (out_size - kCacheWriteAlign) / kCacheWriteAlign * kCacheWriteAlign;
  }
  std::vector<ChunkPlace> places = ParsePlaces(env, run.layout, stored.ByteLength(), out_size, writes, fn);
  auto* worker = new VerifyRunWorker(env, stored, stored.Data(), std::nullopt, run.digests, out, out_data, out_size, std::move(places),
                                     run.compressor, run.digester, run.digest_size, target, skip, background.on,
                                     background.buffer, background.told);
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

// verifyBlobRange(blobFd, storedOffset, storedSize, layout, digests, digestSize, compressor, digester, fd, fileOffset[, background])
Napi::Value VerifyBlobRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "verifyBlobRange";
  size_t argc;
  Background background = TrailingBackground(info, &argc);
  if (argc != 10 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsTypedArray() ||
      !info[4].IsTypedArray() || !info[5].IsNumber() || !info[6].IsNumber() || !info[7].IsNumber() || !info[8].IsNumber() || !info[9].IsNumber()) {
    throw Napi::TypeError::New(env, "verifyBlobRange(blobFd: number, storedOffset: number, storedSize: number, layout: Float64Array, digests: Uint8Array, digestSize: number, compressor: 0 | 1, digester: 0 | 1, fd: number, fileOffset: number[, background: boolean | Int32Array])");
  }
  int blob_fd = info[0].As<Napi::Number>().Int32Value();
  size_t stored_offset = Whole(env, info[1].As<Napi::Number>().DoubleValue(), "storedOffset", fn);
  size_t stored_size = Whole(env, info[2].As<Napi::Number>().DoubleValue(), "storedSize", fn);
  if (blob_fd < 0) throw Napi::RangeError::New(env, "verifyBlobRange: blobFd is not an fd");
  if (stored_size > kMaxBlobRangeBytes) throw Napi::RangeError::New(env, "verifyBlobRange: more than 64 MiB of stored bytes");
  RunArgs run = ParseRunArgs(env, info[3], info[4], info[5], info[6], info[7], fn);
  WriteTarget target = ParseTarget(env, info[8], info[9], fn);
  // The output ends with the last chunk's last page: the chunks come in file order.
  size_t count = run.layout.ElementLength() / kFields;
  size_t out_size = 0;
  for (size_t i = 0; i < count; i++) {
    const double* f = run.layout.Data() + i * kFields;
    if (f[kOutOffset] >= 0 && f[kOutSize] >= 0 && f[kOutOffset] + f[kOutSize] <= static_cast<double>(kMaxBlobRangeBytes)) {
      out_size = std::max(out_size, RoundUp(static_cast<size_t>(f[kOutOffset] + f[kOutSize]), kCacheWriteAlign));
    } else {
      throw Napi::RangeError::New(env, "verifyBlobRange: chunk " + std::to_string(i) + " lies outside 64 MiB of output");
    }
  }
  std::vector<ChunkPlace> places = ParsePlaces(env, run.layout, stored_size, out_size, true, fn);
  auto* worker = new VerifyRunWorker(env, env.Undefined(), nullptr, BlobRange{blob_fd, static_cast<off_t>(stored_offset), stored_size},
                                     run.digests, env.Undefined(), nullptr, out_size, std::move(places),
                                     run.compressor, run.digester, run.digest_size, target, 0, background.on,
                                     background.buffer, background.told);
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

// warmUp(threads): a warm-up job on each of `threads` pool threads (WarmUpWorker).
Napi::Value WarmUp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "warmUp(threads: number)");
  double n = info[0].As<Napi::Number>().DoubleValue();
  if (!(n >= 1 && n <= 1024) || std::floor(n) != n) throw Napi::RangeError::New(env, "warmUp: threads is a whole number from 1 to 1024");
  auto gate = std::make_shared<WarmUpWorker::Gate>();
  Napi::Array promises = Napi::Array::New(env, static_cast<size_t>(n));
  for (uint32_t i = 0; i < static_cast<uint32_t>(n); i++) {
    auto* worker = new WarmUpWorker(env, gate, static_cast<size_t>(n));
    promises.Set(i, worker->Promise());
    worker->Queue();
  }
  return promises;
}

// raiseBackgroundThread(told): a background job's thread given its own priority back, or the job
// told not to lower it when it has not yet (a reader now waits for the job); false when it was raised
// already (LoweredThread).
Napi::Value RaiseBackgroundThread(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t* slot = info.Length() == 1 ? ToldSlot(info[0]) : nullptr;
  if (!slot) throw Napi::TypeError::New(env, "raiseBackgroundThread(told: Int32Array of 2)");
  for (;;) {
    int32_t state = __atomic_load_n(&slot[0], __ATOMIC_ACQUIRE);
    if (state == kRaising || state == kRaised) return Napi::Boolean::New(env, false);
    if (state == 0) {
      if (__atomic_compare_exchange_n(&slot[0], &state, kRaised, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return Napi::Boolean::New(env, true);
      continue;
    }
    if (!__atomic_compare_exchange_n(&slot[0], &state, kRaising, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
    // The thread stays in this job until kRaised is stored (its BackgroundPriority waits for it).
    int nice = __atomic_load_n(&slot[1], __ATOMIC_RELAXED);
    setpriority(PRIO_PROCESS, static_cast<id_t>(state), nice);
    __atomic_store_n(&slot[0], kRaised, __ATOMIC_RELEASE);
    return Napi::Boolean::New(env, true);
  }
}

Napi::Value ReleaseBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "releaseBuffer(ab: ArrayBuffer)");
  NAPI_THROW_IF_FAILED(env, napi_detach_arraybuffer(env, info[0]), Napi::Value());
  return env.Undefined();
}

// The (src, dst) byte arrays of lz4Compress and lz4Decompress: `src` at most `src_max` bytes, `dst` within an int.
std::pair<Napi::Uint8Array, Napi::Uint8Array> Lz4Buffers(const Napi::CallbackInfo& info, const char* fn, size_t src_max) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsTypedArray() || !info[1].IsTypedArray()) throw Napi::TypeError::New(env, std::string(fn) + "(src: Uint8Array, dst: Uint8Array)");
  auto src = info[0].As<Napi::Uint8Array>();
  auto dst = info[1].As<Napi::Uint8Array>();
  if (src.ByteLength() > src_max || dst.ByteLength() > INT32_MAX) throw Napi::RangeError::New(env, std::string(fn) + ": input too large");
  return {src, dst};
}

// lz4Compress(src, dst): `src` as one raw LZ4 block (nydus's lz4_block) into `dst`; the block's size,
// or 0 when it does not fit `dst` (the caller stores the chunk raw then).
Napi::Value Lz4Compress(const Napi::CallbackInfo& info) {
  auto [src, dst] = Lz4Buffers(info, "lz4Compress", LZ4_MAX_INPUT_SIZE);
  int n = LZ4_compress_default(reinterpret_cast<const char*>(src.Data()), reinterpret_cast<char*>(dst.Data()), static_cast<int>(src.ByteLength()),
                               static_cast<int>(dst.ByteLength()));
  return Napi::Number::New(info.Env(), n > 0 ? n : 0);
}

// lz4Decompress(src, dst): a raw LZ4 block into `dst`; the bytes it made, or -1 for a corrupt block.
Napi::Value Lz4Decompress(const Napi::CallbackInfo& info) {
  auto [src, dst] = Lz4Buffers(info, "lz4Decompress", INT32_MAX);
  int n = LZ4_decompress_safe(reinterpret_cast<const char*>(src.Data()), reinterpret_cast<char*>(dst.Data()), static_cast<int>(src.ByteLength()),
                              static_cast<int>(dst.ByteLength()));
  return Napi::Number::New(info.Env(), n < 0 ? -1 : n);
}

}  // namespace fscache
