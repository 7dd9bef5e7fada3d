#include "watcher.h"

#include <cerrno>
#include <string>

#include "errno_error.h"
#include "message.h"

namespace fscache {

// At most this many messages per wake-up, so a flood of requests cannot starve the rest of the loop
// (the fd stays readable and libuv comes back to it).
constexpr int kMaxMessagesPerWakeup = 64;

struct Watcher::Handle {
  uv_poll_t poll;
  Watcher* owner;
  napi_async_cleanup_hook_handle hook = nullptr;
};

Napi::Function Watcher::Define(Napi::Env env) {
  return DefineClass(env, "Watcher", {InstanceMethod<&Watcher::Stop>("stop")});
}

Watcher::Watcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Watcher>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsFunction()) {
    throw Napi::TypeError::New(env, "Watcher(fd: number, callback: (err, msg) => void)");
  }
  fd_ = info[0].As<Napi::Number>().Int32Value();

  uv_loop_t* loop = nullptr;
  NAPI_THROW_IF_FAILED_VOID(env, napi_get_uv_event_loop(env, &loop));
  NAPI_THROW_IF_FAILED_VOID(env, napi_async_init(env, Value(), Napi::String::New(env, "CachefilesWatcher"),
                                                 &async_context_));
  auto* h = new Handle();
  h->owner = this;
  int r = uv_poll_init(loop, &h->poll, fd_);
  h->poll.data = h;
  if (r < 0) {
    delete h;  // not registered with the loop
  } else if ((r = uv_poll_start(&h->poll, UV_READABLE, PollCallback)) < 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&h->poll), CloseCallback);
  }
  if (r < 0) {
    napi_async_destroy(env, async_context_);
    async_context_ = nullptr;
    throw ErrnoError(env, -r, "epoll_ctl", "", "waiting on fd " + std::to_string(fd_));
  }
  handle_ = h;
  napi_add_async_cleanup_hook(env, CleanupHook, h, &h->hook);
  callback_ = Napi::Persistent(info[1].As<Napi::Function>());
  Ref();  // alive while polling, even if JS drops it
}

Watcher::~Watcher() {
  if (handle_) Shutdown(true);
}

Napi::Value Watcher::Stop(const Napi::CallbackInfo& info) {
  if (handle_) Shutdown(false);
  return info.Env().Undefined();
}

// Stops polling now (the fd leaves epoll at once, so closing it afterwards is safe); the handle is
// freed in libuv's close callback. At environment teardown only the libuv part is done.
void Watcher::Shutdown(bool teardown) {
  Handle* h = handle_;
  handle_ = nullptr;
  h->owner = nullptr;
  uv_poll_stop(&h->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&h->poll), CloseCallback);
  if (teardown) return;
  callback_.Reset();
  if (async_context_) napi_async_destroy(Env(), async_context_);
  async_context_ = nullptr;
  Unref();
}

void Watcher::CloseCallback(uv_handle_t* handle) {
  auto* h = static_cast<Handle*>(handle->data);
  if (h->hook) napi_remove_async_cleanup_hook(h->hook);
  delete h;
}

// Environment teardown (process exit, worker termination): close the handle; the hook counts as
// done when CloseCallback removes it. If stop() already began closing, nothing is left to do.
void Watcher::CleanupHook(napi_async_cleanup_hook_handle, void* arg) {
  auto* h = static_cast<Handle*>(arg);
  if (h->owner) h->owner->Shutdown(true);
}

void Watcher::PollCallback(uv_poll_t* poll, int status, int) {
  auto* h = static_cast<Handle*>(poll->data);
  if (h->owner) h->owner->OnReadable(status);
}

void Watcher::OnReadable(int status) {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  Napi::Object self = Value();  // a local handle: no finalizer can run while we deliver
  if (status < 0) {  // the fd cannot be waited on any more
    Deliver(ErrnoError(env, -status, "poll", kCachefilesDevice).Value(), env.Undefined());
    if (handle_) Shutdown(false);
    return;
  }
  for (int i = 0; i < kMaxMessagesPerWakeup && handle_; i++) {
    Napi::HandleScope each(env);
    Napi::Value msg;
    try {
      msg = ReadMessage(env, fd_);
    } catch (const Napi::Error& e) {
      // Mostly one failed request (e.g. EMFILE installing an OPEN's fd: the kernel failed that
      // request itself); keep going. A bad fd means there is nothing left to wait on.
      bool badFd = e.Value().Get("errno").StrictEquals(Napi::Number::New(env, EBADF));
      Deliver(e.Value(), env.Undefined());
      if (badFd && handle_) Shutdown(false);
      continue;
    }
    if (msg.IsNull()) break;
    Deliver(env.Null(), msg);
  }
  (void)self;
}

void Watcher::Deliver(Napi::Value err, Napi::Value msg) {
  if (callback_.IsEmpty()) return;
  Napi::Env env = Env();
  try {
    // MakeCallback: the proper async context, and process.nextTick / microtasks run afterwards.
    // (`this` is the Watcher: napi_make_callback wants an object there.)
    callback_.MakeCallback(Value(), {err, msg}, async_context_);
  } catch (const Napi::Error& e) {
    // A throwing handler is an uncaught exception of the process, like any other event handler.
    napi_fatal_exception(env, e.Value());
  }
}

}  // namespace fscache
