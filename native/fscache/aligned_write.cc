#include "aligned_write.h"

#include <sys/mman.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "errno_error.h"

namespace fscache {
namespace {

constexpr size_t kPoolGranule = 64 * 1024;    // buffers are sized in steps of this, for reuse
constexpr size_t kPoolKeepMax = 8;            // free buffers kept
constexpr size_t kPoolKeepLargest = 8 << 20;  // larger ones are unmapped after use

// Buffers of at least this many bytes are whole 2 MiB pages (transparent huge pages): the first touch of
// a 4 KiB page costs a fault, and on a virtual machine with shadow page tables two (one when the kernel
// copies into it, one when user code does), some 11 us each. Measured on such a machine, a pread of 16
// MiB from the page cache into a new buffer: 46 ms in 4 KiB pages (MAP_POPULATE or not), 1.6 ms in huge
// pages; into a buffer used before, 1.6 ms. Smaller jobs' buffers stay small (the pool keeps them).
constexpr size_t kHugePage = 2 << 20;
constexpr size_t kHugeFrom = 512 * 1024;

size_t CapacityFor(size_t size) {
  size = std::max<size_t>(size, 1);
  return size >= kHugeFrom ? RoundUp(size, kHugePage) : RoundUp(size, kPoolGranule);
}

// A mapping of `cap` bytes (CapacityFor's), or nullptr. Huge-page sized ones are aligned to 2 MiB (the
// mapping is made larger and trimmed) and advised MADV_HUGEPAGE; if the kernel gives no huge pages
// (THP off), they are 4 KiB pages like the rest. All are populated as they are mapped: the kernel fills
// the pages in one go, where first touches would fault them in one at a time (64 MiB: 11 ms populated
// against 180 ms touched, on a virtual machine whose page faults cost some 11 us each).
void* MapBuffer(size_t cap) {
  if (cap % kHugePage != 0) {
    void* p = mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  size_t span = cap + kHugePage;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = (start + kHugePage - 1) & ~(kHugePage - 1);
  if (aligned > start) munmap(raw, aligned - start);
  size_t tail = start + span - (aligned + cap);
  if (tail) munmap(reinterpret_cast<void*>(aligned + cap), tail);
  void* p = reinterpret_cast<void*>(aligned);
  (void)madvise(p, cap, MADV_HUGEPAGE);
  // MADV_POPULATE_WRITE (Linux 5.14): populated now, in huge pages where the kernel has them.
  (void)madvise(p, cap, 23 /* MADV_POPULATE_WRITE */);
  return p;
}

// Process-wide free list of aligned buffers (worker threads of several environments may share it).
// The buffer given back last that fits is taken first: the few in use stay in the CPU's cache. They
// are mapped straight from the kernel and unmapped when dropped: allocated on the pool threads, glibc's
// per-thread arenas kept them (the guest daemon's peak RSS in the Debian read was 10-15 MiB higher).
class AlignedPool {
 public:
  // Returns a buffer of at least `size` bytes and its capacity, or nullptr (ENOMEM). The smallest
  // free one that fits is taken (the last given back of those), so that a small job does not take
  // the large buffer the next large one needs, which would then be mapped afresh.
  void* Acquire(size_t size, size_t* capacity) {
    std::pair<void*, size_t> too_small{nullptr, 0};
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = free_.size();
      for (size_t i = free_.size(); i-- > 0;) {
        if (free_[i].second >= size && (best == free_.size() || free_[i].second < free_[best].second)) best = i;
      }
      if (best < free_.size()) {
        auto found = free_[best];
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
        *capacity = found.second;
        return found.first;
      }
      // None fits: the last one given back makes way for the larger one, so that what is kept grows
      // to the sizes in use rather than piling up small ones beside them.
      if (!free_.empty()) {
        too_small = free_.back();
        free_.pop_back();
      }
    }
    if (too_small.first) munmap(too_small.first, too_small.second);
    size_t cap = CapacityFor(size);
    void* p = MapBuffer(cap);
    if (!p) return nullptr;
    *capacity = cap;
    return p;
  }
  void Release(void* p, size_t capacity) {
    if (capacity <= kPoolKeepLargest) {
      std::lock_guard<std::mutex> lock(mu_);
      if (free_.size() < kPoolKeepMax) {
        free_.emplace_back(p, capacity);
        return;
      }
    }
    munmap(p, capacity);
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> free_;
};

// Never destroyed: pool threads may still use it while statics are torn down at exit.
AlignedPool& pool = *new AlignedPool();

class WriteWorker : public Napi::AsyncWorker {
 public:
  WriteWorker(Napi::Env env, int fd, Napi::Object holder, const uint8_t* data, size_t len, off_t offset)
      : Napi::AsyncWorker(env, "CachefilesWriteAligned"),
        deferred_(Napi::Promise::Deferred::New(env)),
        holder_(Napi::Persistent(holder)),
        fd_(fd),
        data_(data),
        len_(len),
        offset_(offset) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {  // on a pool thread: no JS here
    size_t padded = RoundUp(len_, kCacheWriteAlign);
    size_t capacity = 0;
    auto* buf = static_cast<uint8_t*>(pool.Acquire(padded, &capacity));
    if (!buf) return Fail(ENOMEM, "mmap");
    memcpy(buf, data_, len_);
    memset(buf + len_, 0, padded - len_);
    size_t done = 0;
    while (done < padded) {
      ssize_t n = pwrite(fd_, buf + done, padded - done, offset_ + static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        pool.Release(buf, capacity);
        return Fail(n < 0 ? errno : EIO, "pwrite");
      }
      done += static_cast<size_t>(n);
    }
    pool.Release(buf, capacity);
  }

  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

  void OnError(const Napi::Error&) override {
    deferred_.Reject(ErrnoError(Env(), errno_, syscall_, "",
                                "fd " + std::to_string(fd_) + ", " + std::to_string(len_) + " bytes at " +
                                    std::to_string(offset_))
                         .Value());
  }

 private:
  void Fail(int err, const char* syscall) {
    errno_ = err;
    syscall_ = syscall;
    SetError(syscall);  // routes completion to OnError
  }

  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference holder_;  // keeps the caller's bytes alive until completion
  int fd_;
  const uint8_t* data_;
  size_t len_;
  off_t offset_;
  int errno_ = 0;
  const char* syscall_ = "";
};

}  // namespace

void* AcquireAlignedBuffer(size_t size, size_t* capacity) { return pool.Acquire(size, capacity); }

void ReleaseAlignedBuffer(void* buffer, size_t capacity) { pool.Release(buffer, capacity); }

Napi::Value WriteAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "writeAligned(fd: number, data: Uint8Array, offset: number)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::TypedArray array = info[1].As<Napi::TypedArray>();
  double offset = info[2].As<Napi::Number>().DoubleValue();
  if (!(offset >= 0) || offset > 9007199254740991.0 || std::fmod(offset, static_cast<double>(kCacheWriteAlign)) != 0) {
    throw Napi::RangeError::New(env, "writeAligned: offset " + Napi::Value(info[2]).ToString().Utf8Value() +
                                         " is not a non-negative multiple of 4096");
  }
  const uint8_t* data = static_cast<const uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  size_t len = array.ByteLength();
  if (len == 0) {
    Napi::Promise::Deferred done = Napi::Promise::Deferred::New(env);
    done.Resolve(env.Undefined());
    return done.Promise();
  }
  auto* worker = new WriteWorker(env, fd, array, data, len, static_cast<off_t>(offset));
  Napi::Promise promise = worker->Promise();
  worker->Queue();  // deletes itself after OnOK / OnError, on this thread
  return promise;
}

}  // namespace fscache
