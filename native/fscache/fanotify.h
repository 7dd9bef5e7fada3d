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
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace fscache {

Napi::Value FanotifyInit(const Napi::CallbackInfo& info);
Napi::Value FanotifyMark(const Napi::CallbackInfo& info);
Napi::Value FanotifyRespond(const Napi::CallbackInfo& info);
Napi::Value ReadFanotifyEventsJs(const Napi::CallbackInfo& info);

// Which blocks of each marked file the daemon has filled: one bit per 4096 bytes, in a Uint8Array
// the daemon keeps setting bits in (JS, on its thread, each bit once the bytes are in the file). A
// pre-access event for a range whose blocks are all set is answered FAN_ALLOW as it is read, before
// JS sees it: a read of what is in the cache file then costs the reader one kernel round trip, not a
// turn of the JS event handler. Set and Remove come from JS; Holds from the thread reading events.
class ReadyBlocks {
 public:
  static constexpr unsigned kBlockShift = 12;
  void Set(uint64_t dev, uint64_t ino, Napi::Uint8Array bits);
  void Remove(uint64_t dev, uint64_t ino);
  // Whether every block of [offset, offset + count) is set (false for an empty range).
  bool Holds(uint64_t dev, uint64_t ino, uint64_t offset, uint64_t count) const;

 private:
  struct File {
    Napi::Reference<Napi::Uint8Array> keep;  // (its data does not move: napi_get_typedarray_info externalised it)
    const uint8_t* bits;
    uint64_t blocks;
  };
  mutable std::mutex mu_;
  std::map<std::pair<uint64_t, uint64_t>, File> files_;
};

// Events are small (24 bytes of header and a 24-byte range record); a page holds about 85.
constexpr size_t kFanotifyReadBufferSize = 4096;

// One event as decoded from the group (offset/count/dev/ino -1 when unknown).
struct FanotifyEventRecord {
  int fd = -1;
  int32_t pid = 0;
  uint64_t mask = 0;
  int64_t offset = -1, count = -1;
  int64_t dev = -1, ino = -1;
  bool answered = false;
};

// Decodes the events of one read(2) into `out`, fstat()ing each fd; with `ready`, answers FAN_ALLOW
// (and closes the fd of) each FAN_PRE_ACCESS event whose range it holds. Returns "" or, for a buffer
// it cannot decode, what is wrong (the events before it are in `out`, the fd of the bad one closed).
std::string DecodeFanotifyEvents(int groupFd, const uint8_t* buf, size_t n, const ReadyBlocks* ready,
                                 std::vector<FanotifyEventRecord>& out);
Napi::Object FanotifyEventToJs(Napi::Env env, const FanotifyEventRecord& e);

// Reads the events pending on a group fd (one read(2), several events) and returns them decoded:
//   [{ fd, dev, ino, pid, mask, offset, count, answered: false }, ...]   (offset/count -1 without a range)
// or null when none is pending (the fd is non-blocking). Throws an ErrnoError when read(2) fails and
// an EPROTO one for a buffer it cannot decode (the events before it answered EIO).
Napi::Value ReadFanotifyEvents(Napi::Env env, int fd);

}  // namespace fscache
