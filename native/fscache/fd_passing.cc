#include "fd_passing.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "errno_error.h"

namespace fscache {
namespace {

// Connects a SOCK_STREAM unix socket to `path` with send and receive timeouts; -errno on failure.
int ConnectUnix(const std::string& path, int timeout_ms, const char** syscall) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    *syscall = "connect";
    return -ENAMETOOLONG;
  }
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    *syscall = "socket";
    return -errno;
  }
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  int r;
  do {
    r = connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    int err = errno;
    close(s);
    *syscall = "connect";
    return -err;
  }
  return s;
}

class StateWorker : public Napi::AsyncWorker {
 public:
  StateWorker(Napi::Env env, const char* name, std::string path, int timeout_ms)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)), path_(std::move(path)),
        timeout_ms_(timeout_ms) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Fail(int err, const char* syscall) {
    errno_ = err;
    syscall_ = syscall;
    SetError(syscall);
  }
  void OnError(const Napi::Error&) override {
    deferred_.Reject(ErrnoError(Env(), errno_, syscall_, path_, "supervisor socket").Value());
  }

  Napi::Promise::Deferred deferred_;
  std::string path_;
  int timeout_ms_;
  int errno_ = 0;
  const char* syscall_ = "";
};

class SendWorker : public StateWorker {
 public:
  SendWorker(Napi::Env env, std::string path, Napi::Object holder, const uint8_t* data, size_t len, int fd, int timeout_ms)
      : StateWorker(env, "SupervisorSendState", std::move(path), timeout_ms), holder_(Napi::Persistent(holder)),
        data_(data), len_(len), fd_(fd) {}

 protected:
  void Execute() override {
    const char* syscall = "";
    int s = ConnectUnix(path_, timeout_ms_, &syscall);
    if (s < 0) return Fail(-s, syscall);
    size_t done = 0;
    bool fd_sent = fd_ < 0;
    // The fd rides on the first message (with at least one byte, as a stream socket needs).
    static const uint8_t kEmpty = 0;
    while (done < len_ || !fd_sent) {
      iovec iov{const_cast<uint8_t*>(len_ ? data_ + done : &kEmpty), len_ ? len_ - done : 1};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
      if (!fd_sent) {
        memset(control, 0, sizeof(control));
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd_, sizeof(int));
      }
      ssize_t n = sendmsg(s, &msg, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int err = errno;
        close(s);
        return Fail(err, "sendmsg");
      }
      fd_sent = true;
      if (len_) done += static_cast<size_t>(n);
    }
    close(s);
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  Napi::ObjectReference holder_;
  const uint8_t* data_;
  size_t len_;
  int fd_;
};

class ReceiveWorker : public StateWorker {
 public:
  ReceiveWorker(Napi::Env env, std::string path, size_t max_bytes, int timeout_ms)
      : StateWorker(env, "SupervisorReceiveState", std::move(path), timeout_ms), max_bytes_(max_bytes) {}

 protected:
  void Execute() override {
    const char* syscall = "";
    int s = ConnectUnix(path_, timeout_ms_, &syscall);
    if (s < 0) return Fail(-s, syscall);
    std::vector<uint8_t> chunk(256 * 1024);
    for (;;) {
      iovec iov{chunk.data(), chunk.size()};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      ssize_t n = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int err = errno;
        close(s);
        return Fail(err, "recvmsg");
      }
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
          int fd;
          memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          // The first fd is the device; anything more is not ours to keep.
          if (fd_ < 0) fd_ = fd;
          else close(fd);
        }
      }
      if (n == 0) break;
      if (data_.size() + static_cast<size_t>(n) > max_bytes_) {
        close(s);
        return Fail(EMSGSIZE, "recvmsg");
      }
      data_.insert(data_.end(), chunk.begin(), chunk.begin() + n);
    }
    close(s);
  }
  void OnOK() override {
    Napi::Object out = Napi::Object::New(Env());
    out.Set("data", Napi::Buffer<uint8_t>::Copy(Env(), data_.data(), data_.size()));
    out.Set("fd", Napi::Number::New(Env(), fd_));
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override {
    if (fd_ >= 0) close(fd_);
    StateWorker::OnError(e);
  }

 private:
  size_t max_bytes_;
  std::vector<uint8_t> data_;
  int fd_ = -1;
};

}  // namespace

Napi::Value SendState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsTypedArray() || !info[2].IsNumber() || !info[3].IsNumber()) {
    throw Napi::TypeError::New(env, "sendState(path: string, data: Uint8Array, fd: number, timeoutMs: number)");
  }
  Napi::TypedArray array = info[1].As<Napi::TypedArray>();
  const uint8_t* data = static_cast<const uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  auto* w = new SendWorker(env, info[0].As<Napi::String>().Utf8Value(), array, data, array.ByteLength(),
                           info[2].As<Napi::Number>().Int32Value(), info[3].As<Napi::Number>().Int32Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value ReceiveState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "receiveState(path: string, maxBytes: number, timeoutMs: number)");
  }
  auto* w = new ReceiveWorker(env, info[0].As<Napi::String>().Utf8Value(),
                              static_cast<size_t>(info[1].As<Napi::Number>().Int64Value()),
                              info[2].As<Napi::Number>().Int32Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace fscache
