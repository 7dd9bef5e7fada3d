// One call about this process that Node has no API for.
//
//   setParentDeathSignal(signo)   prctl(PR_SET_PDEATHSIG): the kernel sends `signo` to this process
//                                 the moment its parent dies (a worker learns at once that its
//                                 supervisor is gone). 0 clears it.
#pragma once

#include <napi.h>

namespace fscache {

Napi::Value SetParentDeathSignal(const Napi::CallbackInfo& info);

}  // namespace fscache
