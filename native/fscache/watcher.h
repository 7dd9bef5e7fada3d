// Waiting for requests without blocking the event loop: a libuv poll handle on the device fd.
//
// /dev/cachefiles implements poll() (EPOLLIN while a request is pending) and its read(2) never
// blocks (0 when nothing is pending), so the wait can live in the event loop itself: no thread, no
// locking, requests reach JS in the kernel's order on the loop thread. (A fanotify group is read on a
// thread of its own instead: fanotify_reader.h says why.)
#pragma once

#include <napi.h>
#include <uv.h>

namespace fscache {

// JS: new Watcher(fd, (err, msg) => void); watcher.stop().
// While started it keeps itself (and the loop) alive; stop() before closing the fd.
class Watcher : public Napi::ObjectWrap<Watcher> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Watcher(const Napi::CallbackInfo& info);
  ~Watcher() override;

 private:
  struct Handle;  // the uv handle outlives this object until libuv's close callback

  Napi::Value Stop(const Napi::CallbackInfo& info);
  void Shutdown(bool teardown);
  void OnReadable(int status);
  void Deliver(Napi::Value err, Napi::Value msg);

  static void PollCallback(uv_poll_t* poll, int status, int events);
  static void CloseCallback(uv_handle_t* handle);
  static void CleanupHook(napi_async_cleanup_hook_handle hook, void* arg);

  int fd_ = -1;
  Handle* handle_ = nullptr;  // null once stopped
  Napi::FunctionReference callback_;
  napi_async_context async_context_ = nullptr;
};

}  // namespace fscache
