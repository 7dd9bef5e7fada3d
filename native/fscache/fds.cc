#include "fds.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>
#include <cerrno>
#include <climits>
#include <cmath>
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
  // Taken as it is, never truncated: 4294967296 is no fd, not fd 0.
  double d = info[0].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= INT_MAX && std::floor(d) == d)) {
    throw Napi::RangeError::New(info.Env(), "reserveFd: " + std::to_string(d) + " is not an fd number (0 to " + std::to_string(INT_MAX) + ")");
  }
  int n = static_cast<int>(d);
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY && static_cast<rlim_t>(n) >= lim.rlim_cur) {
    throw Napi::RangeError::New(info.Env(), "reserveFd: fd " + std::to_string(n) + " is not below the open files limit (RLIMIT_NOFILE " +
                                                std::to_string(static_cast<unsigned long long>(lim.rlim_cur)) + ")");
  }
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

Napi::Value TryLock(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "tryLock(fd: number)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (RetryOnEintr([&] { return flock(fd, LOCK_EX | LOCK_NB); }) == 0) return Napi::Boolean::New(info.Env(), true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(info.Env(), false);
  throw ErrnoError(info.Env(), errno, "flock", "", "LOCK_EX of fd " + std::to_string(fd));
}

Napi::Value NofileLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() == 2) {
    if (!info[0].IsNumber() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "nofileLimit(soft?: number, hard?: number)");
    double soft = info[0].As<Napi::Number>().DoubleValue();
    double hard = info[1].As<Napi::Number>().DoubleValue();
    if (!(soft >= 0 && soft <= hard && hard <= 1e15 && std::floor(soft) == soft && std::floor(hard) == hard)) {
      throw Napi::RangeError::New(env, "nofileLimit: soft and hard must be whole numbers, soft <= hard");
    }
    struct rlimit lim = {static_cast<rlim_t>(soft), static_cast<rlim_t>(hard)};
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) throw ErrnoError(env, errno, "setrlimit", "", "RLIMIT_NOFILE " + std::to_string(lim.rlim_cur) + ":" + std::to_string(lim.rlim_max));
  } else if (info.Length() != 0) {
    throw Napi::TypeError::New(env, "nofileLimit(soft?: number, hard?: number)");
  }
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) throw ErrnoError(env, errno, "getrlimit", "", "RLIMIT_NOFILE");
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, lim.rlim_cur == RLIM_INFINITY ? -1 : static_cast<double>(lim.rlim_cur)));
  out.Set(1u, Napi::Number::New(env, lim.rlim_max == RLIM_INFINITY ? -1 : static_cast<double>(lim.rlim_max)));
  return out;
}

}  // namespace fscache
