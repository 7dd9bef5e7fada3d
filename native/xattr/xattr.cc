// Extended attributes of a path without following symlinks: Node has no xattr API.
// Paths and names are raw bytes (Buffers), so non-UTF-8 file names work.
#include <napi.h>
#include <sys/xattr.h>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

static Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& path) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + " " + path + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

static std::string BufArg(const Napi::CallbackInfo& info, size_t i) {
  Napi::Buffer<char> b = info[i].As<Napi::Buffer<char>>();
  return std::string(b.Data(), b.Length());
}

// llist(path: Buffer): Buffer[] of names (without the NUL).
static Napi::Value List(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = BufArg(info, 0);
  for (;;) {
    ssize_t n = llistxattr(path.c_str(), nullptr, 0);
    if (n < 0) {
      if (errno == ENOTSUP) return Napi::Array::New(env, 0);
      throw ErrnoError(env, errno, "llistxattr", path);
    }
    std::vector<char> buf(n + 1);
    ssize_t m = llistxattr(path.c_str(), buf.data(), n);
    if (m < 0 && errno == ERANGE) continue;  // grew in between
    if (m < 0) throw ErrnoError(env, errno, "llistxattr", path);
    Napi::Array out = Napi::Array::New(env);
    uint32_t k = 0;
    for (ssize_t i = 0; i < m;) {
      size_t len = strnlen(buf.data() + i, m - i);
      if (len > 0) out.Set(k++, Napi::Buffer<char>::Copy(env, buf.data() + i, len));
      i += len + 1;
    }
    return out;
  }
}

// lget(path: Buffer, name: Buffer): Buffer
static Napi::Value Get(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = BufArg(info, 0);
  std::string name = BufArg(info, 1);
  for (;;) {
    ssize_t n = lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
    if (n < 0) throw ErrnoError(env, errno, "lgetxattr", path);
    std::vector<char> buf(n > 0 ? n : 1);
    ssize_t m = lgetxattr(path.c_str(), name.c_str(), buf.data(), n);
    if (m < 0 && errno == ERANGE) continue;
    if (m < 0) throw ErrnoError(env, errno, "lgetxattr", path);
    return Napi::Buffer<char>::Copy(env, buf.data(), m);
  }
}

// lset(path: Buffer, name: Buffer, value: Buffer): void
static Napi::Value Set(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = BufArg(info, 0);
  std::string name = BufArg(info, 1);
  Napi::Buffer<char> value = info[2].As<Napi::Buffer<char>>();
  if (lsetxattr(path.c_str(), name.c_str(), value.Data(), value.Length(), 0) < 0) {
    throw ErrnoError(env, errno, "lsetxattr", path);
  }
  return env.Undefined();
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("llist", Napi::Function::New(env, List));
  exports.Set("lget", Napi::Function::New(env, Get));
  exports.Set("lset", Napi::Function::New(env, Set));
  return exports;
}

NODE_API_MODULE(xattr, Init)
