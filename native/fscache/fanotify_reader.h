// The fanotify group read on a thread of its own, so that a reader of the mount waits for the daemon's
// event loop only when its bytes must be fetched.
//
// A FAN_PRE_ACCESS event holds up the process that reads. When its bytes are in the cache file already
// (fetched ahead, ReadyBlocks), the answer needs nothing from JS, but a watcher in the event loop
// (watcher.h) reads the event only when the loop comes back to its poll: after whatever callback
// (a verified chunk, an API call) runs then. Here a thread waits in poll(2) on the group, reads each
// batch of events as it comes, answers those ReadyBlocks holds at once, and hands every event (the
// answered ones too: JS traces them and moves its read-ahead on) to the loop through a uv_async.
//
// With an EventJournal, each event it cannot answer is recorded there as it is read, before JS hears
// of it (event_journal.h says why).
//
// JS: new FanotifyReader(fd, (err, events) => void, journal?); reader.setReadyBlocks(dev, ino, bits |
// null); reader.stop(). While started it keeps itself (and the loop) alive; stop() before closing the fd.
#pragma once

#include <napi.h>
#include <uv.h>

#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "event_journal.h"
#include "fanotify.h"

namespace fscache {

class FanotifyReader : public Napi::ObjectWrap<FanotifyReader> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit FanotifyReader(const Napi::CallbackInfo& info);
  ~FanotifyReader() override;

 private:
  struct Handle;  // the uv_async handle outlives this object until libuv's close callback
  // What the thread hands over: a batch of events, or a failure (errno, with what failed).
  struct Delivery {
    std::vector<FanotifyEventRecord> events;
    int err = 0;
    std::string what;
  };

  Napi::Value Stop(const Napi::CallbackInfo& info);
  Napi::Value SetReadyBlocks(const Napi::CallbackInfo& info);
  void Run();
  bool NearReadyEnd(const std::vector<FanotifyEventRecord>& events) const;
  void Post(Delivery d);
  void Shutdown(bool teardown);
  void Drain();

  static void AsyncCallback(uv_async_t* async);
  static void CloseCallback(uv_handle_t* handle);
  static void CleanupHook(napi_async_cleanup_hook_handle hook, void* arg);

  int fd_ = -1;
  int wakeFd_ = -1;  // an eventfd: written by stop() to end the thread's poll
  ReadyBlocks ready_;
  EventJournal* journal_ = nullptr;
  Napi::ObjectReference journalRef_;  // keeps journal_ alive
  std::thread thread_;
  std::mutex mu_;
  std::deque<Delivery> queue_;  // under mu_
  Handle* handle_ = nullptr;    // null once stopped
  Napi::FunctionReference callback_;
  napi_async_context async_context_ = nullptr;
};

}  // namespace fscache
