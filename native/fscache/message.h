// Reading and decoding one on-demand request from /dev/cachefiles.
#pragma once

#include <napi.h>

namespace fscache {

// The device, as errors name it.
constexpr char kCachefilesDevice[] = "/dev/cachefiles";

// Reads one message (the kernel hands out one per read(2)) and returns it decoded as a plain object:
//   { type: 'open', msgId, objectId, volumeKey, cookieKey, fd, flags }
//   { type: 'close', msgId, objectId }
//   { type: 'read', msgId, objectId, offset, len }
// or null when no request is pending. Throws an ErrnoError when read(2) fails (for an OPEN the
// kernel has then failed that request itself) and an EPROTO one for a message it cannot decode.
Napi::Value ReadMessage(Napi::Env env, int fd);

}  // namespace fscache
