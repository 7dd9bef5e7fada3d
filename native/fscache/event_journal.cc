#include "event_journal.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "errno_error.h"

namespace fscache {

namespace {

// A number JS gives as a record field: an integer a double holds exactly (offsets may be -1).
bool FieldArg(const Napi::Value& v, int64_t* out) {
  if (!v.IsNumber()) return false;
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= -9007199254740991.0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<int64_t>(d))) return false;
  *out = static_cast<int64_t>(d);
  return true;
}

std::string PendingLine(int64_t fd, int64_t dev, int64_t ino, int64_t offset, int64_t count) {
  return "+ " + std::to_string(fd) + " " + std::to_string(dev) + " " + std::to_string(ino) + " " + std::to_string(offset) +
         " " + std::to_string(count) + "\n";
}

// Marks EventJournal objects, so that an object some other class wraps is never taken for one.
const napi_type_tag kJournalTag = {0x6e796475735f6a6fULL, 0x75726e616c5f7631ULL};

}  // namespace

Napi::Function EventJournal::Define(Napi::Env env) {
  return DefineClass(env, "EventJournal", {InstanceMethod<&EventJournal::Add>("add"), InstanceMethod<&EventJournal::Done>("done"),
                                           InstanceMethod<&EventJournal::TakeFailure>("takeFailure"),
                                           InstanceMethod<&EventJournal::Close>("close")});
}

EventJournal* EventJournal::Unwrap(Napi::Value v) {
  if (!v.IsObject()) return nullptr;
  void* p = nullptr;
  bool tagged = false;
  if (napi_check_object_type_tag(v.Env(), v, &kJournalTag, &tagged) != napi_ok || !tagged) return nullptr;
  if (napi_unwrap(v.Env(), v, &p) != napi_ok) return nullptr;
  return static_cast<EventJournal*>(p);
}

EventJournal::EventJournal(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventJournal>(info) {
  if (!info[0].IsNumber() || !info[1].IsString()) throw Napi::TypeError::New(info.Env(), "EventJournal(fd: number, path: string)");
  fd_ = info[0].As<Napi::Number>().Int32Value();
  path_ = info[1].As<Napi::String>().Utf8Value();
  napi_type_tag_object(info.Env(), info.This(), &kJournalTag);
}

EventJournal::~EventJournal() {
  if (fd_ >= 0) close(fd_);
}

void EventJournal::Record(const std::vector<FanotifyEventRecord>& events) {
  std::string lines;
  for (const auto& e : events) {
    if (!e.answered && e.fd >= 0) lines += PendingLine(e.fd, e.dev, e.ino, e.offset, e.count);
  }
  if (lines.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& e : events) {
    if (!e.answered && e.fd >= 0) pending_[e.fd]++;
  }
  Append(lines);
}

Napi::Value EventJournal::Add(const Napi::CallbackInfo& info) {
  int64_t f[5];
  for (size_t i = 0; i < 5; i++) {
    if (!FieldArg(info[i], &f[i])) throw Napi::TypeError::New(info.Env(), "add(fd, dev, ino, offset, count): integers");
  }
  std::lock_guard<std::mutex> lock(mu_);
  pending_[f[0]]++;
  Append(PendingLine(f[0], f[1], f[2], f[3], f[4]));
  return info.Env().Undefined();
}

Napi::Value EventJournal::Done(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!FieldArg(info[0], &fd)) throw Napi::TypeError::New(info.Env(), "done(fd: number)");
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(fd);
  if (it != pending_.end() && --it->second == 0) pending_.erase(it);
  if (pending_.empty() && written_ >= kTruncateAt) Empty();
  else Append("- " + std::to_string(fd) + "\n");
  return info.Env().Undefined();
}

Napi::Value EventJournal::TakeFailure(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_.empty()) return info.Env().Null();
  Napi::String s = Napi::String::New(info.Env(), failure_);
  failure_.clear();
  return s;
}

Napi::Value EventJournal::Close(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  return info.Env().Undefined();
}

// A record appended whole, or else the journal emptied. A record cut short (a full disk) could give a
// successor a wrong range, and a `+` whose `-` is lost would have it answer whatever event later holds
// that fd number, its bytes unfetched. An emptied journal only costs a successor of a worker that dies
// meanwhile the events that worker left (their readers wait), never a wrong answer.
void EventJournal::Append(const std::string& lines) {
  if (fd_ < 0) return;
  ssize_t n = RetryOnEintr([&] { return write(fd_, lines.data(), lines.size()); });
  if (n == static_cast<ssize_t>(lines.size())) {
    written_ += static_cast<uint64_t>(n);
    return;
  }
  failure_ = n < 0 ? std::string(strerror(errno)) : std::to_string(n) + " of the " + std::to_string(lines.size()) + " bytes of a record were written";
  Empty();
}

// Truncated (which needs no room on the disk); if even that fails, the file is removed: a successor
// then finds no records.
void EventJournal::Empty() {
  if (fd_ < 0) return;
  if (ftruncate(fd_, 0) == 0) {
    written_ = 0;
    return;
  }
  unlink(path_.c_str());
}

}  // namespace fscache
