#include "fds.h"

#include <fcntl.h>
#include <unistd.h>
#include <cerrno>
#include <string>

#include "errno_error.h"

namespace fscache {

Napi::Value Dup(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "dup(fd: number)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) throw ErrnoError(info.Env(), errno, "fcntl", "", "F_DUPFD_CLOEXEC of fd " + std::to_string(fd));
  return Napi::Number::New(info.Env(), copy);
}

Napi::Value ReserveFd(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "reserveFd(n: number)");
  int n = info[0].As<Napi::Number>().Int32Value();
  if (n < 0) throw Napi::RangeError::New(info.Env(), "reserveFd: negative fd number");
  if (fcntl(n, F_GETFD) >= 0) return Napi::Boolean::New(info.Env(), false);  // in use: no one else gets it
  int tmp = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (tmp < 0) throw ErrnoError(info.Env(), errno, "open", "/dev/null");
  if (tmp == n) return Napi::Boolean::New(info.Env(), true);
  int r = dup3(tmp, n, O_CLOEXEC);
  int err = errno;
  close(tmp);
  if (r < 0) throw ErrnoError(info.Env(), err, "dup3", "", "reserving fd " + std::to_string(n));
  return Napi::Boolean::New(info.Env(), true);
}

}  // namespace fscache
