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

namespace fscache {

Napi::Value FanotifyInit(const Napi::CallbackInfo& info);
Napi::Value FanotifyMark(const Napi::CallbackInfo& info);
Napi::Value FanotifyRespond(const Napi::CallbackInfo& info);
Napi::Value ReadFanotifyEventsJs(const Napi::CallbackInfo& info);

// Reads the events pending on a group fd (one read(2), several events) and returns them decoded:
//   [{ fd, pid, mask, offset, count }, ...]   (offset/count -1 when the event carries no range)
// or null when none is pending (the fd is non-blocking). Throws an ErrnoError when read(2) fails and
// an EPROTO one for a buffer it cannot decode.
Napi::Value ReadFanotifyEvents(Napi::Env env, int fd);

}  // namespace fscache
