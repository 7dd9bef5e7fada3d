// The fscache on-demand addon: the system calls Node cannot make for a cachefiles daemon.
// Everything else (object table, data sources, replies' policy) lives in TypeScript.
//
//   open(path)                      open(2) O_RDWR|O_CLOEXEC, e.g. /dev/cachefiles -> fd
//   command(fd, text)               write(2) one text command ("dir ...", "bind ondemand", "copen ...")
//   readMessage(fd)                 read(2) one request, decoded (message.h), or null
//   new Watcher(fd, cb)             wait for requests in the event loop (watcher.h)
//   writeAligned(fd, data, offset)  O_DIRECT-safe pwrite(2) on a worker (aligned_write.h) -> Promise
//   readComplete(fd, msgId)         ioctl(2) CACHEFILES_IOC_READ_COMPLETE
//   close(fd)                       close(2)
//   sendState(path, data, fd, ms)   hand state bytes + an fd to a supervisor socket (fd_passing.h)
//   receiveState(path, max, ms)     take them back from it
//   dataRanges(fd, from, to)        lseek(2) SEEK_DATA/SEEK_HOLE: the ranges of [from, to) that hold data
//   fanotify*, readFanotifyEvents   the fanotify pre-content front end (fanotify.h)
//   mount, umount                   file-backed EROFS mounts (mount.h)
//   dup, reserveFd, tryLock         event fds kept, fd numbers held for a predecessor's events, flock (fds.h)
//   nofileLimit                     RLIMIT_NOFILE read and set (fds.h)
// Failures throw Errors with errno (positive), code ('EINVAL'), syscall and path or detail.
#include <napi.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <cerrno>
#include <string>

#include "aligned_write.h"
#include "chunk_verify.h"
#include "errno_error.h"
#include "fanotify.h"
#include "fd_passing.h"
#include "fds.h"
#include "process.h"
#include "mount.h"
#include "message.h"
#include "uapi.h"
#include "watcher.h"
#include "event_journal.h"
#include "fanotify_reader.h"

namespace fscache {
namespace {

int FdArg(const Napi::CallbackInfo& info, size_t i, const char* usage) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), usage);
  return info[i].As<Napi::Number>().Int32Value();
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "open(path: string)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd;
  do {
    fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw ErrnoError(info.Env(), errno, "open", path);
  return Napi::Number::New(info.Env(), fd);
}

// The kernel takes one whole command per write(2) and answers each with 0 or -errno.
Napi::Value Command(const Napi::CallbackInfo& info) {
  const char* usage = "command(fd: number, text: string)";
  int fd = FdArg(info, 0, usage);
  if (!info[1].IsString()) throw Napi::TypeError::New(info.Env(), usage);
  std::string text = info[1].As<Napi::String>().Utf8Value();
  ssize_t n = RetryOnEintr([&] { return write(fd, text.data(), text.size()); });
  if (n < 0) throw ErrnoError(info.Env(), errno, "write", "", "cachefiles command '" + text + "'");
  return info.Env().Undefined();
}

Napi::Value ReadMessageJs(const Napi::CallbackInfo& info) {
  return ReadMessage(info.Env(), FdArg(info, 0, "readMessage(fd: number)"));
}

Napi::Value ReadComplete(const Napi::CallbackInfo& info) {
  const char* usage = "readComplete(fd: number, msgId: number)";
  int fd = FdArg(info, 0, usage);
  if (!info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), usage);
  uint32_t msgId = info[1].As<Napi::Number>().Uint32Value();
  if (ioctl(fd, kIocReadComplete, static_cast<unsigned long>(msgId)) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl", "",
                     "CACHEFILES_IOC_READ_COMPLETE msg " + std::to_string(msgId) + " on fd " + std::to_string(fd));
  }
  return info.Env().Undefined();
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0, "close(fd: number)");
  // On Linux the fd is gone even when close(2) reports EINTR: never retry.
  if (close(fd) < 0 && errno != EINTR) throw ErrnoError(info.Env(), errno, "close", "", "fd " + std::to_string(fd));
  return info.Env().Undefined();
}

// The anonymous fd of an OPEN forwards lseek to the cache file behind it (fs/cachefiles/ondemand.c),
// so SEEK_DATA/SEEK_HOLE tell which ranges the cache file really holds, where fstat sees nothing.
// Returns [start0, end0, start1, end1, ...] clipped to [from, to).
Napi::Value DataRanges(const Napi::CallbackInfo& info) {
  const char* usage = "dataRanges(fd: number, from: number, to: number)";
  int fd = FdArg(info, 0, usage);
  if (!info[1].IsNumber() || !info[2].IsNumber()) throw Napi::TypeError::New(info.Env(), usage);
  off_t from = static_cast<off_t>(info[1].As<Napi::Number>().Int64Value());
  off_t to = static_cast<off_t>(info[2].As<Napi::Number>().Int64Value());
  Napi::Array out = Napi::Array::New(info.Env());
  uint32_t n = 0;
  off_t pos = from;
  while (pos < to) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data at or after pos
      throw ErrnoError(info.Env(), errno, "lseek", "", "SEEK_DATA at " + std::to_string(pos) + " on fd " + std::to_string(fd));
    }
    if (data >= to) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) throw ErrnoError(info.Env(), errno, "lseek", "", "SEEK_HOLE at " + std::to_string(data) + " on fd " + std::to_string(fd));
    if (hole > to) hole = to;
    out.Set(n++, Napi::Number::New(info.Env(), static_cast<double>(data)));
    out.Set(n++, Napi::Number::New(info.Env(), static_cast<double>(hole)));
    pos = hole;
  }
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("command", Napi::Function::New(env, Command, "command"));
  exports.Set("readMessage", Napi::Function::New(env, ReadMessageJs, "readMessage"));
  exports.Set("Watcher", Watcher::Define(env));
  exports.Set("FanotifyReader", FanotifyReader::Define(env));
  exports.Set("EventJournal", EventJournal::Define(env));
  exports.Set("writeAligned", Napi::Function::New(env, WriteAligned, "writeAligned"));
  exports.Set("readComplete", Napi::Function::New(env, ReadComplete, "readComplete"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("dataRanges", Napi::Function::New(env, DataRanges, "dataRanges"));
  exports.Set("sendState", Napi::Function::New(env, SendState, "sendState"));
  exports.Set("receiveState", Napi::Function::New(env, ReceiveState, "receiveState"));
  exports.Set("fanotifyInit", Napi::Function::New(env, FanotifyInit, "fanotifyInit"));
  exports.Set("fanotifyMark", Napi::Function::New(env, FanotifyMark, "fanotifyMark"));
  exports.Set("fanotifyRespond", Napi::Function::New(env, FanotifyRespond, "fanotifyRespond"));
  exports.Set("readFanotifyEvents", Napi::Function::New(env, ReadFanotifyEventsJs, "readFanotifyEvents"));
  exports.Set("mount", Napi::Function::New(env, Mount, "mount"));
  exports.Set("umount", Napi::Function::New(env, Umount, "umount"));
  exports.Set("dup", Napi::Function::New(env, Dup, "dup"));
  exports.Set("reserveFd", Napi::Function::New(env, ReserveFd, "reserveFd"));
  exports.Set("tryLock", Napi::Function::New(env, TryLock, "tryLock"));
  exports.Set("nofileLimit", Napi::Function::New(env, NofileLimit, "nofileLimit"));
  exports.Set("setParentDeathSignal", Napi::Function::New(env, SetParentDeathSignal, "setParentDeathSignal"));
  exports.Set("verifyRunNative", Napi::Function::New(env, VerifyRunNative, "verifyRunNative"));
  exports.Set("verifyBlobRange", Napi::Function::New(env, VerifyBlobRange, "verifyBlobRange"));
  exports.Set("warmUp", Napi::Function::New(env, WarmUp, "warmUp"));
  exports.Set("raiseBackgroundThread", Napi::Function::New(env, RaiseBackgroundThread, "raiseBackgroundThread"));
  exports.Set("releaseBuffer", Napi::Function::New(env, ReleaseBuffer, "releaseBuffer"));
  exports.Set("lz4Compress", Napi::Function::New(env, Lz4Compress, "lz4Compress"));
  exports.Set("lz4Decompress", Napi::Function::New(env, Lz4Decompress, "lz4Decompress"));
  exports.Set("MSG_MAX_SIZE", Napi::Number::New(env, static_cast<double>(kMsgMaxSize)));
  return exports;
}

}  // namespace
}  // namespace fscache

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return fscache::Init(env, exports); }

NODE_API_MODULE(fscache, InitAddon)
