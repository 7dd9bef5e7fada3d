// fanotify pre-content events: the second kernel front end of the daemon (Linux 6.14+). A group is
// initialised once, each blob's cache file is marked FAN_PRE_ACCESS, and every read of a range the
// kernel is about to do from a marked file waits until the daemon answers the event.
//
//   fanotifyInit()                          fanotify_init(2) pre-content class -> group fd
//   fanotifyMark(fd, add, path)             fanotify_mark(2) FAN_MARK_ADD/REMOVE FAN_PRE_ACCESS
//   readFanotifyEvents(fd)                  read(2) what is pending, decoded (array), or null
//   fanotifyRespond(fd, eventFd, errno)     write(2) FAN_ALLOW (errno 0) or FAN_DENY_ERRNO(errno)
#pragma once

#include <napi.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <utility>

namespace fscache {

Napi::Value FanotifyInit(const Napi::CallbackInfo& info);
Napi::Value FanotifyMark(const Napi::CallbackInfo& info);
Napi::Value FanotifyRespond(const Napi::CallbackInfo& info);
Napi::Value ReadFanotifyEventsJs(const Napi::CallbackInfo& info);

// Which blocks of each marked file the daemon has filled: one bit per 4096 bytes, in a Uint8Array
// the daemon keeps setting bits in (JS, on the same thread). A pre-access event for a range whose
// blocks are all set is answered FAN_ALLOW as it is read, before JS sees it: a read of what is in the
// cache file then costs the reader one kernel round trip, not a turn of the JS event handler.
class ReadyBlocks {
 public:
  static constexpr unsigned kBlockShift = 12;
  void Set(uint64_t dev, uint64_t ino, Napi::Uint8Array bits);
  void Remove(uint64_t dev, uint64_t ino) { files_.erase({dev, ino}); }
  // Whether every block of [offset, offset + count) is set (false for an empty range).
  bool Holds(uint64_t dev, uint64_t ino, uint64_t offset, uint64_t count) const;

 private:
  struct File {
    Napi::Reference<Napi::Uint8Array> keep;
    const uint8_t* bits;
    uint64_t blocks;
  };
  std::map<std::pair<uint64_t, uint64_t>, File> files_;
};

// Reads the events pending on a group fd (one read(2), several events) and returns them decoded:
//   [{ fd, dev, ino, pid, mask, offset, count, answered }, ...]   (offset/count -1 without a range)
// or null when none is pending (the fd is non-blocking). With `ready`, a FAN_PRE_ACCESS event whose
// range it holds is answered FAN_ALLOW and its fd closed here (`answered` true). Throws an ErrnoError
// when read(2) fails and an EPROTO one for a buffer it cannot decode.
Napi::Value ReadFanotifyEvents(Napi::Env env, int fd, const ReadyBlocks* ready = nullptr);

}  // namespace fscache
