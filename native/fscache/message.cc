#include "message.h"

#include <fcntl.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <string>

#include "errno_error.h"
#include "uapi.h"

namespace fscache {
namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1

// Read buffer: the kernel refuses a read shorter than the pending message with EMSGSIZE.
constexpr size_t kReadBufferSize = 4096;
static_assert(kReadBufferSize >= kMsgMaxSize, "read buffer must hold the largest message");

// A message the kernel should never send. Once the header is known the error carries msgId,
// objectId and opcode, so the daemon can still fail that request.
Napi::Error ProtocolError(Napi::Env env, const std::string& what, const Msg* m = nullptr) {
  Napi::Error e = ErrnoError(env, EPROTO, "read", kCachefilesDevice);
  e.Set("message", Napi::String::New(env, "EPROTO: undecodable cachefiles message: " + what));
  if (m) {
    e.Set("msgId", Napi::Number::New(env, m->msg_id));
    e.Set("objectId", Napi::Number::New(env, m->object_id));
    e.Set("opcode", Napi::Number::New(env, m->opcode));
  }
  return e;
}

// Keys are bytes; latin1 keeps every byte as one char (as erofs/devtable.ts decodeTag does).
Napi::String Latin1(Napi::Env env, const uint8_t* p, size_t n) {
  napi_value s;
  NAPI_THROW_IF_FAILED(env, napi_create_string_latin1(env, reinterpret_cast<const char*>(p), n, &s),
                       Napi::String());
  return Napi::String(env, s);
}

Napi::Object Header(Napi::Env env, const char* type, const Msg& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", Napi::String::New(env, type));
  o.Set("msgId", Napi::Number::New(env, m.msg_id));
  o.Set("objectId", Napi::Number::New(env, m.object_id));
  return o;
}

Napi::Value DecodeOpen(Napi::Env env, const Msg& m, const uint8_t* data, size_t n) {
  OpenPayload p;
  if (n < sizeof p) throw ProtocolError(env, "OPEN shorter than its payload header", &m);
  memcpy(&p, data, sizeof p);
  const uint8_t* keys = data + sizeof p;
  size_t room = n - sizeof p;
  if (p.volume_key_size > room || p.cookie_key_size > room - p.volume_key_size) {
    close(static_cast<int>(p.fd));  // the kernel installed it; nobody will learn its number
    throw ProtocolError(env, "OPEN keys overrun the message", &m);
  }
  // The volume key's size counts its trailing NUL; drop it.
  size_t vlen = strnlen(reinterpret_cast<const char*>(keys), p.volume_key_size);
  // The kernel installed the anonymous fd without O_CLOEXEC; keep it out of child processes.
  fcntl(static_cast<int>(p.fd), F_SETFD, FD_CLOEXEC);
  Napi::Object o = Header(env, "open", m);
  o.Set("volumeKey", Latin1(env, keys, vlen));
  o.Set("cookieKey", Latin1(env, keys + p.volume_key_size, p.cookie_key_size));
  o.Set("fd", Napi::Number::New(env, p.fd));
  o.Set("flags", Napi::Number::New(env, p.flags));
  return o;
}

Napi::Value DecodeRead(Napi::Env env, const Msg& m, const uint8_t* data, size_t n) {
  ReadPayload p;
  if (n < sizeof p) throw ProtocolError(env, "READ shorter than its payload", &m);
  memcpy(&p, data, sizeof p);
  if (static_cast<double>(p.off) > kMaxSafeInteger || static_cast<double>(p.len) > kMaxSafeInteger) {
    throw ProtocolError(env, "READ range beyond 2^53", &m);
  }
  Napi::Object o = Header(env, "read", m);
  o.Set("offset", Napi::Number::New(env, static_cast<double>(p.off)));
  o.Set("len", Napi::Number::New(env, static_cast<double>(p.len)));
  return o;
}

}  // namespace

Napi::Value ReadMessage(Napi::Env env, int fd) {
  alignas(8) uint8_t buf[kReadBufferSize];
  ssize_t n = RetryOnEintr([&] { return read(fd, buf, sizeof buf); });
  // The device answers 0 when nothing is pending; EAGAIN is the same news from a non-blocking fd
  // of another kind (tests feed the decoder through a pipe).
  if (n < 0 && errno == EAGAIN) return env.Null();
  if (n < 0) throw ErrnoError(env, errno, "read", kCachefilesDevice);
  if (n == 0) return env.Null();

  Msg m;
  if (static_cast<size_t>(n) < sizeof m) throw ProtocolError(env, "shorter than its header");
  memcpy(&m, buf, sizeof m);
  if (m.len != static_cast<size_t>(n)) {
    throw ProtocolError(env, "header says " + std::to_string(m.len) + " bytes, read gave " + std::to_string(n), &m);
  }
  const uint8_t* data = buf + sizeof m;
  size_t dlen = n - sizeof m;
  switch (m.opcode) {
    case kOpOpen: return DecodeOpen(env, m, data, dlen);
    case kOpClose: return Header(env, "close", m);
    case kOpRead: return DecodeRead(env, m, data, dlen);
    default: throw ProtocolError(env, "unknown opcode " + std::to_string(m.opcode), &m);
  }
}

}  // namespace fscache
