// mount(2) and umount2(2): the fanotify front end mounts EROFS file-backed (the bootstrap file as
// source, each blob's cache file as `device=`), which util-linux's mount would put on a loop device.
//
//   mount(source, target, fstype, flags, data)   mount(2)
//   umount(target, flags)                        umount2(2)
#pragma once

#include <napi.h>

namespace fscache {

Napi::Value Mount(const Napi::CallbackInfo& info);
Napi::Value Umount(const Napi::CallbackInfo& info);

}  // namespace fscache
