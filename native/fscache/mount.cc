#include "mount.h"

#include <sys/mount.h>
#include <unistd.h>
#include <cerrno>
#include <string>

#include "errno_error.h"

namespace fscache {

Napi::Value Mount(const Napi::CallbackInfo& info) {
  const char* usage = "mount(source: string, target: string, fstype: string, flags: number, data: string)";
  if (!info[0].IsString() || !info[1].IsString() || !info[2].IsString() || !info[3].IsNumber() || !info[4].IsString()) {
    throw Napi::TypeError::New(info.Env(), usage);
  }
  std::string source = info[0].As<Napi::String>().Utf8Value();
  std::string target = info[1].As<Napi::String>().Utf8Value();
  std::string fstype = info[2].As<Napi::String>().Utf8Value();
  unsigned long flags = info[3].As<Napi::Number>().Uint32Value();
  std::string data = info[4].As<Napi::String>().Utf8Value();
  if (mount(source.c_str(), target.c_str(), fstype.c_str(), flags, data.c_str()) < 0) {
    throw ErrnoError(info.Env(), errno, "mount", target, fstype + " from " + source + (data.empty() ? "" : " -o " + data));
  }
  return info.Env().Undefined();
}

Napi::Value Umount(const Napi::CallbackInfo& info) {
  if (!info[0].IsString() || !info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "umount(target: string, flags: number)");
  std::string target = info[0].As<Napi::String>().Utf8Value();
  if (umount2(target.c_str(), info[1].As<Napi::Number>().Int32Value()) < 0) throw ErrnoError(info.Env(), errno, "umount2", target);
  return info.Env().Undefined();
}

}  // namespace fscache
