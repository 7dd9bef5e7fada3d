// JS errors that keep the errno, shaped like Node's own system errors:
// message "EINVAL: invalid argument, write '/dev/cachefiles'", err.errno = 22 (positive, as the
// project's NydusError), err.code = 'EINVAL', err.syscall, and err.path when there is one.
#pragma once

#include <napi.h>
#include <uv.h>
#include <cerrno>
#include <string>

namespace fscache {

// `detail` (optional) says what the call was about when there is no path, e.g. the command written.
inline Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& path = "",
                              const std::string& detail = "") {
  const char* code = uv_err_name(-err);  // the names Node itself gives (util.getSystemErrorName)
  // (libuv words ENOTSUP as "operation not supported on socket", whatever the call was about.)
  const char* text = err == ENOTSUP ? "operation not supported" : uv_strerror(-err);
  std::string message = std::string(code) + ": " + text + ", " + syscall;
  if (!path.empty()) message += " '" + path + "'";
  if (!detail.empty()) message += " (" + detail + ")";
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, code));
  e.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) e.Set("path", Napi::String::New(env, path));
  return e;
}

// Makes a read(2)/write(2)-like call again while a signal interrupts it; its result (errno set on -1).
template <typename Call>
inline auto RetryOnEintr(Call call) -> decltype(call()) {
  decltype(call()) r;
  do {
    r = call();
  } while (r < 0 && errno == EINTR);
  return r;
}

}  // namespace fscache
