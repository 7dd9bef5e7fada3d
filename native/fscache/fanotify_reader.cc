#include "fanotify_reader.h"

#include <poll.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "errno_error.h"

namespace fscache {

constexpr int kReaderNice = -15;
// Events answered here are held back from JS up to this many, or until the group is quiet this long (Run says why).
constexpr size_t kHeldMax = 64;
constexpr timespec kHeldFor = {0, 1000 * 1000};
// An answered event that reads within this of the end of the bytes held ahead of it is posted at once
// with the ones held before it (Run says why): half the amplification window at its widest
// (blob-cache.ts, WINDOW_RAMP_MAX x amplify_io's default), where BlobCacheFile extends the window.
constexpr uint64_t kNearReadyEnd = 2 << 20;

struct FanotifyReader::Handle {
  uv_async_t async;
  FanotifyReader* owner;
  napi_async_cleanup_hook_handle hook = nullptr;
};

Napi::Function FanotifyReader::Define(Napi::Env env) {
  return DefineClass(env, "FanotifyReader", {InstanceMethod<&FanotifyReader::Stop>("stop"),
                                             InstanceMethod<&FanotifyReader::SetReadyBlocks>("setReadyBlocks")});
}

FanotifyReader::FanotifyReader(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FanotifyReader>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsFunction()) {
    throw Napi::TypeError::New(env, "FanotifyReader(fd: number, callback: (err, events) => void, journal?: EventJournal)");
  }
  fd_ = info[0].As<Napi::Number>().Int32Value();
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    journal_ = EventJournal::Unwrap(info[2]);
    if (!journal_) throw Napi::TypeError::New(env, "FanotifyReader: the journal is not an EventJournal");
    journalRef_ = Napi::Persistent(info[2].As<Napi::Object>());
  }
  wakeFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wakeFd_ < 0) throw ErrnoError(env, errno, "eventfd", "", "waking the fanotify reader");
  uv_loop_t* loop = nullptr;
  NAPI_THROW_IF_FAILED_VOID(env, napi_get_uv_event_loop(env, &loop));
  auto* h = new Handle();
  h->owner = this;
  int r = uv_async_init(loop, &h->async, AsyncCallback);
  if (r < 0) {
    delete h;
    close(wakeFd_);
    throw ErrnoError(env, -r, "uv_async_init", "", "fanotify reader");
  }
  h->async.data = h;
  NAPI_THROW_IF_FAILED_VOID(env, napi_async_init(env, Value(), Napi::String::New(env, "FanotifyReader"), &async_context_));
  handle_ = h;
  napi_add_async_cleanup_hook(env, CleanupHook, h, &h->hook);
  callback_ = Napi::Persistent(info[1].As<Napi::Function>());
  thread_ = std::thread([this] { Run(); });
  Ref();  // alive while reading, even if JS drops it
}

FanotifyReader::~FanotifyReader() {
  if (handle_) Shutdown(true);
}

Napi::Value FanotifyReader::SetReadyBlocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "setReadyBlocks(dev: number, ino: number, bits: Uint8Array | null)";
  if (!info[0].IsNumber() || !info[1].IsNumber() || !(info[2].IsNull() || info[2].IsTypedArray())) {
    throw Napi::TypeError::New(env, usage);
  }
  double dev = info[0].As<Napi::Number>().DoubleValue(), ino = info[1].As<Napi::Number>().DoubleValue();
  if (!(dev >= 0 && ino >= 0 && dev <= 9007199254740991.0 && ino <= 9007199254740991.0)) throw Napi::RangeError::New(env, usage);
  if (info[2].IsNull()) {
    ready_.Remove(static_cast<uint64_t>(dev), static_cast<uint64_t>(ino));
  } else {
    if (info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) throw Napi::TypeError::New(env, usage);
    ready_.Set(static_cast<uint64_t>(dev), static_cast<uint64_t>(ino), info[2].As<Napi::Uint8Array>());
  }
  return env.Undefined();
}

Napi::Value FanotifyReader::Stop(const Napi::CallbackInfo& info) {
  if (handle_) Shutdown(false);
  return info.Env().Undefined();
}

// The thread: poll(2) on the group and on wakeFd_; each batch read is decoded (ready events answered)
// and posted. A read that fails for good (EBADF: the fd was closed under us) ends it.
//
// The thread runs at a higher priority (kReaderNice, where the process may raise it: CAP_SYS_NICE): a
// reader waits for it at every event, and it must not wait in the run queue behind chunk verification.
// On the host's two CPUs, the bench's big workload read cold: 217 ms against 237 ms at nice 0 (medians
// of five, each run in turn).
//
// Events answered here are posted in bunches (kHeldMax, or once the group has been quiet for
// kHeldFor), not one by one: JS only follows them (traces, moves its read-ahead on), and a post per
// event woke the event loop at every event (uv_async_send: a write to its eventfd), which then took a
// CPU from the reader just let go; on the host's two CPUs a ping-pong read of a marked file cost 45 us
// an event with such a wake-up against 29 us without. The Debian rootfs read cold (~5,700 events, 99%
// answered here), each build in turn: 1,308 against 1,333 ms (medians of 20; 14 of 20 pairs faster,
// by 75 ms at the median), the daemon's CPU 595 against 680 ms; under perf sched (three runs each)
// the loop woke 2,900 times instead of 15,500 over three reads and the readers waited in the run
// queue 0.74-1.0 s instead of 1.5-1.65 s. An event JS must answer takes the held ones with it, in
// order. Held events reach JS once the group was quiet for 1 ms or 64 are held (a reader whose events come
// closer than that has up to 63 held for longer), its read-ahead with them: the events left to JS were
// 0.6% of them against 0.4-0.5%.
// But JS moves the read-ahead on only as it hears of the reads (BlobCacheFile.readOn): a sequential
// reader (its events 30 us apart) ran through the held bytes and overtook the window before JS heard
// of it, and waited for the chunk it then missed. So an event near the end of the bytes held ahead
// of it (kNearReadyEnd) is posted at once. Measured on the host (fanotify, caches dropped, the bench's
// images read whole, JS-answered events and the time their readers waited, per read): big 18-19
// events, 20-34 ms -> 2-6, 3-7 ms; Debian rootfs 29-37, 60-101 ms -> 5-11, 8-32 ms; the daemon's CPU
// as before; the read's wall time 218 -> 210 ms for big (medians of 15, each build in turn), within
// the noise for Debian.
void FanotifyReader::Run() {
  (void)setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), kReaderNice);
  alignas(8) uint8_t buf[kFanotifyReadBufferSize];
  Delivery held;
  auto postHeld = [&] {
    if (!held.events.empty()) Post(std::move(held));
    held = Delivery();
  };
  for (;;) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {wakeFd_, POLLIN, 0}};
    int r = ppoll(p, 2, held.events.empty() ? nullptr : &kHeldFor, nullptr);
    if (r < 0) {
      if (errno == EINTR) continue;
      postHeld();
      Post({{}, errno, "poll"});
      return;
    }
    if (r == 0) {
      postHeld();
      continue;
    }
    if (p[1].revents) {
      postHeld();
      return;
    }
    if (p[0].revents & POLLNVAL) {
      postHeld();
      Post({{}, EBADF, "poll"});
      return;
    }
    for (;;) {
      ssize_t n = RetryOnEintr([&] { return read(fd_, buf, sizeof buf); });
      if (n < 0 && errno == EAGAIN) break;
      if (n <= 0) {
        int err = n < 0 ? errno : EPIPE;
        postHeld();
        Post({{}, err, "read"});
        if (err == EBADF) return;
        // A failure that lasts (EMFILE: no fd for the next event) would have poll(2) return at once:
        // a pause, not a loop that floods the event loop with the same error.
        usleep(10 * 1000);
        break;
      }
      Delivery d;
      std::string bad = DecodeFanotifyEvents(fd_, buf, static_cast<size_t>(n), &ready_, d.events);
      if (journal_) journal_->Record(d.events);
      bool allAnswered = bad.empty();
      for (const auto& e : d.events) allAnswered = allAnswered && e.answered;
      if (allAnswered) {
        held.events.insert(held.events.end(), d.events.begin(), d.events.end());
        if (held.events.size() >= kHeldMax || NearReadyEnd(d.events)) postHeld();
        continue;
      }
      if (!held.events.empty()) d.events.insert(d.events.begin(), held.events.begin(), held.events.end());
      held = Delivery();
      if (!d.events.empty()) Post(std::move(d));
      if (!bad.empty()) Post({{}, EPROTO, "undecodable fanotify event: " + bad});
    }
  }
}

// Whether one of these events reads within kNearReadyEnd of the end of what the cache file holds
// ahead of it (ReadyBlocks): JS must hear of it now, not with the held bunch (Run).
bool FanotifyReader::NearReadyEnd(const std::vector<FanotifyEventRecord>& events) const {
  for (const auto& e : events) {
    if (e.dev < 0 || e.offset < 0 || e.count < 0) continue;
    if (!ready_.Holds(static_cast<uint64_t>(e.dev), static_cast<uint64_t>(e.ino), static_cast<uint64_t>(e.offset + e.count), kNearReadyEnd)) return true;
  }
  return false;
}

void FanotifyReader::Post(Delivery d) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(d));
  }
  // (handle_ lives until Shutdown, which joins this thread before closing it.)
  uv_async_send(&handle_->async);
}

void FanotifyReader::AsyncCallback(uv_async_t* async) {
  auto* h = static_cast<Handle*>(async->data);
  if (h->owner) h->owner->Drain();
}

// On the loop: every batch posted since the last call, in order; the events of consecutive batches
// in one array.
void FanotifyReader::Drain() {
  std::deque<Delivery> batches;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batches.swap(queue_);
  }
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  Napi::Object self = Value();  // a local handle: no finalizer can run while we deliver
  auto deliver = [&](Napi::Value err, Napi::Value msg) {
    if (callback_.IsEmpty()) return;
    try {
      callback_.MakeCallback(self, {err, msg}, async_context_);
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());
    }
  };
  Napi::Array events = Napi::Array::New(env);
  uint32_t count = 0;
  for (auto& d : batches) {
    if (d.err == 0) {
      for (const auto& e : d.events) events.Set(count++, FanotifyEventToJs(env, e));
      continue;
    }
    if (count) deliver(env.Null(), events);
    events = Napi::Array::New(env);
    count = 0;
    Napi::Error e = ErrnoError(env, d.err, d.err == EPROTO ? "read" : d.what.c_str(), "", "fanotify group fd " + std::to_string(fd_));
    if (d.err == EPROTO) e.Set("message", Napi::String::New(env, "EPROTO: " + d.what));
    deliver(e.Value(), env.Undefined());
  }
  if (count) deliver(env.Null(), events);
}

// Ends the thread (joined: it is in poll(2) or about to be) and closes the async handle; events it
// posted and the loop has not taken yet are delivered first. At environment teardown only the thread
// and the libuv part are done.
void FanotifyReader::Shutdown(bool teardown) {
  Handle* h = handle_;
  uint64_t one = 1;
  (void)!write(wakeFd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  close(wakeFd_);
  wakeFd_ = -1;
  if (!teardown) Drain();
  handle_ = nullptr;
  h->owner = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&h->async), CloseCallback);
  if (teardown) return;
  callback_.Reset();
  if (async_context_) napi_async_destroy(Env(), async_context_);
  async_context_ = nullptr;
  Unref();
}

void FanotifyReader::CloseCallback(uv_handle_t* handle) {
  auto* h = static_cast<Handle*>(handle->data);
  if (h->hook) napi_remove_async_cleanup_hook(h->hook);
  delete h;
}

void FanotifyReader::CleanupHook(napi_async_cleanup_hook_handle, void* arg) {
  auto* h = static_cast<Handle*>(arg);
  if (h->owner) h->owner->Shutdown(true);
}

}  // namespace fscache
