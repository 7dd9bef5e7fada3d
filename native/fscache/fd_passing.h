// Handing a daemon's state and its /dev/cachefiles fd to a supervisor and back, as nydus-snapshotter's
// supervisor expects (pkg/supervisor): the daemon connects to the supervisor's unix socket, and either
// sends its state bytes with the fd attached (SCM_RIGHTS) and closes, or receives them until EOF.
#pragma once

#include <napi.h>

namespace fscache {

// sendState(path, data, fd, timeoutMs) -> Promise<void>
Napi::Value SendState(const Napi::CallbackInfo& info);
// receiveState(path, maxBytes, timeoutMs) -> Promise<{ data: Buffer, fd: number }> (fd -1 when none came)
Napi::Value ReceiveState(const Napi::CallbackInfo& info);

}  // namespace fscache
