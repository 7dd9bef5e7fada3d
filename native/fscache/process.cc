#include "process.h"

#include <sys/prctl.h>

#include <cerrno>
#include <csignal>
#include <string>

#include "errno_error.h"

namespace fscache {

Napi::Value SetParentDeathSignal(const Napi::CallbackInfo& info) {
  const char* usage = "setParentDeathSignal(signo: number)";
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), usage);
  int signo = info[0].As<Napi::Number>().Int32Value();
  if (signo < 0 || signo >= NSIG) throw Napi::RangeError::New(info.Env(), usage);
  if (prctl(PR_SET_PDEATHSIG, static_cast<unsigned long>(signo), 0, 0, 0) != 0) {
    throw ErrnoError(info.Env(), errno, "prctl", "", "PR_SET_PDEATHSIG " + std::to_string(signo));
  }
  return info.Env().Undefined();
}

}  // namespace fscache
