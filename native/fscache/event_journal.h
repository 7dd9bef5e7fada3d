// The fanotify front end's journal of pending events (src/daemon/frontend/fanotify-journal.ts says why
// it exists and reads it back): one line per event read and not yet answered, `+ <fd> <dev> <ino>
// <offset> <count>`, and `- <fd>` once it is answered.
//
// Written here, not in JS, because events are read on the FanotifyReader's thread: an event must be in
// the journal before the worker can die with it unanswered and unrecorded, so the thread records what
// it cannot answer as it reads it, before JS hears of it. JS records the answers (done) and the events
// a predecessor left (add). Records are appended under one lock; the file is truncated when nothing is
// pending and it has grown past kTruncateAt, so it stays small without a truncate per event.
//
// JS: new EventJournal(fd, path); add(fd, dev, ino, offset, count); done(fd); takeFailure(): string |
// null (why a record could not be written since the last call; the journal was emptied then); close().
#pragma once

#include <napi.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "fanotify.h"

namespace fscache {

class EventJournal : public Napi::ObjectWrap<EventJournal> {
 public:
  static Napi::Function Define(Napi::Env env);
  static EventJournal* Unwrap(Napi::Value v);  // nullptr when `v` is not one
  explicit EventJournal(const Napi::CallbackInfo& info);
  ~EventJournal() override;

  // The events of `events` that are not answered and have an fd, recorded as pending (any thread).
  void Record(const std::vector<FanotifyEventRecord>& events);

 private:
  static constexpr uint64_t kTruncateAt = 256 * 1024;

  Napi::Value Add(const Napi::CallbackInfo& info);
  Napi::Value Done(const Napi::CallbackInfo& info);
  Napi::Value TakeFailure(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  // Under mu_.
  void Append(const std::string& lines);
  void Empty();

  std::mutex mu_;
  int fd_ = -1;  // -1 once closed: records are dropped
  std::string path_;
  // Pending events by fd number (how many records of that number wait for an answer: one, unless a
  // caller records an event twice). An answer for a number not pending changes nothing (answered twice).
  std::unordered_map<int64_t, int> pending_;
  uint64_t written_ = 0;
  std::string failure_;
};

}  // namespace fscache
