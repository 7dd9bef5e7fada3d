#include "fanotify.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <string>

#include "errno_error.h"
#include "fanotify_uapi.h"

namespace fscache {
namespace {

int FdArg(const Napi::CallbackInfo& info, size_t i, const char* usage) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), usage);
  return info[i].As<Napi::Number>().Int32Value();
}

Napi::Error ProtocolError(Napi::Env env, const std::string& what) {
  Napi::Error e = ErrnoError(env, EPROTO, "read", "", "fanotify group");
  e.Set("message", Napi::String::New(env, "EPROTO: undecodable fanotify event: " + what));
  return e;
}

}  // namespace

// O_RDWR: the fd of each event is opened read-write, so the daemon can write the range through it
// (writes through an event's fd raise no events). FAN_UNLIMITED_QUEUE: a permission event must never
// be dropped on overflow, its reader would wait forever.
Napi::Value FanotifyInit(const Napi::CallbackInfo& info) {
  unsigned flags = kFanClassPreContent | kFanCloexec | kFanNonblock | kFanUnlimitedQueue;
  long fd = syscall(SYS_fanotify_init, flags, O_RDWR | O_LARGEFILE);
  if (fd < 0) throw ErrnoError(info.Env(), errno, "fanotify_init", "", "FAN_CLASS_PRE_CONTENT");
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

Napi::Value FanotifyMark(const Napi::CallbackInfo& info) {
  const char* usage = "fanotifyMark(fd: number, add: boolean, path: string)";
  int fd = FdArg(info, 0, usage);
  if (!info[1].IsBoolean() || !info[2].IsString()) throw Napi::TypeError::New(info.Env(), usage);
  bool add = info[1].As<Napi::Boolean>().Value();
  std::string path = info[2].As<Napi::String>().Utf8Value();
  unsigned flags = add ? kFanMarkAdd : kFanMarkRemove;
  if (syscall(SYS_fanotify_mark, fd, flags, kFanPreAccess, AT_FDCWD, path.c_str()) < 0) {
    throw ErrnoError(info.Env(), errno, "fanotify_mark", path, add ? "FAN_MARK_ADD FAN_PRE_ACCESS" : "FAN_MARK_REMOVE");
  }
  return info.Env().Undefined();
}

// errno 0 allows; any other denies with that errno (the reader of an EROFS mount sees EIO whatever
// the errno, since EROFS turns a failed backing read into EIO).
Napi::Value FanotifyRespond(const Napi::CallbackInfo& info) {
  const char* usage = "fanotifyRespond(fd: number, eventFd: number, errno: number)";
  int fd = FdArg(info, 0, usage);
  int eventFd = FdArg(info, 1, usage);
  int err = FdArg(info, 2, usage);
  if (err < 0 || err > static_cast<int>(kFanErrnoMask)) throw Napi::RangeError::New(info.Env(), "fanotifyRespond: errno out of range");
  Response r{eventFd, err == 0 ? kFanAllow : kFanDeny | (static_cast<uint32_t>(err) << kFanErrnoShift)};
  ssize_t n = RetryOnEintr([&] { return write(fd, &r, sizeof r); });
  if (n < 0) {
    throw ErrnoError(info.Env(), errno, "write", "", "fanotify response " + std::string(err ? "deny" : "allow") +
                                                         " to event fd " + std::to_string(eventFd));
  }
  return info.Env().Undefined();
}

void ReadyBlocks::Set(uint64_t dev, uint64_t ino, Napi::Uint8Array bits) {
  File f{Napi::Persistent(bits), bits.Data(), static_cast<uint64_t>(bits.ByteLength()) * 8};
  std::lock_guard<std::mutex> lock(mu_);
  files_[{dev, ino}] = std::move(f);
}

void ReadyBlocks::Remove(uint64_t dev, uint64_t ino) {
  std::lock_guard<std::mutex> lock(mu_);
  files_.erase({dev, ino});
}

bool ReadyBlocks::Holds(uint64_t dev, uint64_t ino, uint64_t offset, uint64_t count) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = files_.find({dev, ino});
  if (it == files_.end() || count == 0 || offset + count < offset) return false;
  const File& f = it->second;
  uint64_t first = offset >> kBlockShift, last = (offset + count - 1) >> kBlockShift;
  if (last >= f.blocks) return false;
  for (uint64_t b = first; b <= last; b++) {
    // JS sets bits on its own thread (after the bytes are in the file); a byte is read whole.
    if (!(__atomic_load_n(&f.bits[b >> 3], __ATOMIC_ACQUIRE) & (1u << (b & 7)))) return false;
  }
  return true;
}

std::string DecodeFanotifyEvents(int groupFd, const uint8_t* buf, size_t n, const ReadyBlocks* ready,
                                 std::vector<FanotifyEventRecord>& out) {
  size_t pos = 0;
  while (pos < n) {
    EventMetadata m;
    if (n - pos < sizeof m) return "truncated event header";
    memcpy(&m, buf + pos, sizeof m);
    if (m.event_len < sizeof m || m.event_len > n - pos || m.metadata_len < sizeof m || m.metadata_len > m.event_len) {
      if (m.fd >= 0) close(m.fd);
      return "event length " + std::to_string(m.event_len) + " out of bounds";
    }
    if (m.vers != kFanotifyMetadataVersion) {
      if (m.fd >= 0) close(m.fd);
      return "metadata version " + std::to_string(m.vers);
    }
    FanotifyEventRecord e;
    e.fd = m.fd;
    e.pid = m.pid;
    e.mask = m.mask;
    for (size_t r = pos + m.metadata_len; r < pos + m.event_len;) {
      EventInfoHeader h;
      if (pos + m.event_len - r < sizeof h) break;
      memcpy(&h, buf + r, sizeof h);
      if (h.len < sizeof h || h.len > pos + m.event_len - r) break;
      if (h.info_type == kFanEventInfoTypeRange && h.len >= sizeof(EventInfoRange)) {
        EventInfoRange range;
        memcpy(&range, buf + r, sizeof range);
        e.offset = static_cast<int64_t>(range.offset);
        e.count = static_cast<int64_t>(range.count);
      }
      r += h.len;
    }
    // Which file: the event's fd stat()ed here, a syscall, not a Stats object per event in JS.
    struct stat st;
    if (m.fd >= 0 && fstat(m.fd, &st) == 0) {
      e.dev = static_cast<int64_t>(st.st_dev);
      e.ino = static_cast<int64_t>(st.st_ino);
    }
    // Bytes the daemon has already put in the file: allowed here. A failed answer (the event is
    // gone) leaves the event to JS, which answers and reports it as any other.
    if (ready && m.fd >= 0 && e.dev >= 0 && e.offset >= 0 && (m.mask & kFanPreAccess) &&
        ready->Holds(static_cast<uint64_t>(e.dev), static_cast<uint64_t>(e.ino), static_cast<uint64_t>(e.offset),
                     static_cast<uint64_t>(e.count))) {
      Response r{m.fd, kFanAllow};
      if (RetryOnEintr([&] { return write(groupFd, &r, sizeof r); }) == static_cast<ssize_t>(sizeof r)) {
        close(m.fd);
        e.answered = true;
      }
    }
    out.push_back(e);
    pos += m.event_len;
  }
  return "";
}

Napi::Object FanotifyEventToJs(Napi::Env env, const FanotifyEventRecord& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", Napi::Number::New(env, e.fd));
  o.Set("answered", Napi::Boolean::New(env, e.answered));
  o.Set("dev", Napi::Number::New(env, static_cast<double>(e.dev)));
  o.Set("ino", Napi::Number::New(env, static_cast<double>(e.ino)));
  o.Set("pid", Napi::Number::New(env, e.pid));
  o.Set("mask", Napi::Number::New(env, static_cast<double>(e.mask)));
  o.Set("offset", Napi::Number::New(env, static_cast<double>(e.offset)));
  o.Set("count", Napi::Number::New(env, static_cast<double>(e.count)));
  return o;
}

Napi::Value ReadFanotifyEvents(Napi::Env env, int fd) {
  alignas(8) uint8_t buf[kFanotifyReadBufferSize];
  ssize_t n = RetryOnEintr([&] { return read(fd, buf, sizeof buf); });
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    throw ErrnoError(env, errno, "read", "", "fanotify group fd " + std::to_string(fd));
  }
  if (n == 0) return env.Null();
  std::vector<FanotifyEventRecord> events;
  std::string bad = DecodeFanotifyEvents(fd, buf, static_cast<size_t>(n), nullptr, events);
  // Events decoded before an undecodable one are no longer in the kernel's queue (their fds are ours):
  // answered EIO here, not left without an answer.
  if (!bad.empty()) {
    for (const auto& e : events) {
      if (e.answered || e.fd < 0) continue;
      Response r{e.fd, kFanDeny | (static_cast<uint32_t>(EIO) << kFanErrnoShift)};
      (void)RetryOnEintr([&] { return write(fd, &r, sizeof r); });
      close(e.fd);
    }
    throw ProtocolError(env, bad);
  }
  Napi::Array out = Napi::Array::New(env, events.size());
  for (uint32_t i = 0; i < events.size(); i++) out.Set(i, FanotifyEventToJs(env, events[i]));
  return out;
}

Napi::Value ReadFanotifyEventsJs(const Napi::CallbackInfo& info) {
  return ReadFanotifyEvents(info.Env(), FdArg(info, 0, "readFanotifyEvents(fd: number)"));
}

}  // namespace fscache
