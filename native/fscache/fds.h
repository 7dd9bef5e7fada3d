// Fd numbers the fanotify front end manages itself.
//
//   dup(fd)          fcntl(F_DUPFD_CLOEXEC): the same open file under a new number (an event's fd
//                    kept for later writes raises no events, as the event fd itself)
//   reserveFd(n)     make sure no new fd gets number n: /dev/null dup3(2)'d onto n if n is free.
//                    Returns whether it did (then close(n) releases it). A restarted daemon answers
//                    its predecessor's events by their fd numbers, and the kernel matches answers by
//                    number alone: a new event must not take one of those numbers meanwhile.
//                    A number that cannot be an fd (negative, past int, not below RLIMIT_NOFILE) is a
//                    RangeError, never truncated or dup3'd.
//   tryLock(fd)      flock(2) LOCK_EX|LOCK_NB: true once held, false while another open file
//                    description holds it (a daemon's directory, held for the daemon's life).
//   nofileLimit([soft, hard])  getrlimit(RLIMIT_NOFILE) as [soft, hard]; given both, setrlimit first
//                    (nydusd --rlimit-nofile: every mount holds fds, an image a few)
#pragma once

#include <napi.h>

namespace fscache {

Napi::Value Dup(const Napi::CallbackInfo& info);
Napi::Value ReserveFd(const Napi::CallbackInfo& info);
Napi::Value TryLock(const Napi::CallbackInfo& info);
Napi::Value NofileLimit(const Napi::CallbackInfo& info);

}  // namespace fscache
