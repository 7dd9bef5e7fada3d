// The kernel's on-demand cachefiles protocol (include/uapi/linux/cachefiles.h, Linux 5.19+), mirrored
// here so the addon builds against older libc headers too. Every size and offset is asserted below,
// and against the system header when it has one. No other file of the project knows these layouts:
// messages leave the addon as plain decoded objects.
#pragma once

#include <linux/ioctl.h>
#include <cstddef>
#include <cstdint>

namespace fscache {

// Largest message the kernel sends (cookie keys are at most 255 bytes, volume keys about as long).
constexpr size_t kMsgMaxSize = 1024;

enum Opcode : uint32_t {
  kOpOpen = 0,
  kOpClose = 1,
  kOpRead = 2,
};

// Header of every message read from /dev/cachefiles; one message per read(2).
struct Msg {
  uint32_t msg_id;     // id to answer with (copen / READ_COMPLETE)
  uint32_t opcode;     // enum Opcode
  uint32_t len;        // bytes of the whole message, header included
  uint32_t object_id;  // the cache file (one per OPEN until its CLOSE)
  // uint8_t data[];   // opcode-specific payload
};

// OPEN payload, followed by the volume key (NUL-terminated, the NUL counted in volume_key_size)
// and the cookie key (binary, cookie_key_size bytes).
struct OpenPayload {
  uint32_t volume_key_size;  // bytes, trailing NUL included
  uint32_t cookie_key_size;  // bytes
  uint32_t fd;               // anonymous fd on the cache file, installed in our fd table
  uint32_t flags;
  // uint8_t data[];
};

// READ payload: the byte range of the cache file the kernel wants filled.
struct ReadPayload {
  uint64_t off;  // bytes
  uint64_t len;  // bytes
};

// Reply to a READ once its range is written: the argument is the READ's msg_id.
constexpr unsigned long kIocReadComplete = _IOW(0x98, 1, int);

static_assert(sizeof(Msg) == 16, "struct cachefiles_msg header is 16 bytes");
static_assert(offsetof(Msg, msg_id) == 0 && offsetof(Msg, opcode) == 4 && offsetof(Msg, len) == 8 &&
                  offsetof(Msg, object_id) == 12,
              "struct cachefiles_msg layout");
static_assert(sizeof(OpenPayload) == 16, "struct cachefiles_open header is 16 bytes");
static_assert(offsetof(OpenPayload, volume_key_size) == 0 && offsetof(OpenPayload, cookie_key_size) == 4 &&
                  offsetof(OpenPayload, fd) == 8 && offsetof(OpenPayload, flags) == 12,
              "struct cachefiles_open layout");
static_assert(sizeof(ReadPayload) == 16 && offsetof(ReadPayload, off) == 0 && offsetof(ReadPayload, len) == 8,
              "struct cachefiles_read layout");
static_assert(kIocReadComplete == 0x40049801, "CACHEFILES_IOC_READ_COMPLETE");

}  // namespace fscache

#if __has_include(<linux/cachefiles.h>)
#include <linux/cachefiles.h>
static_assert(fscache::kMsgMaxSize == CACHEFILES_MSG_MAX_SIZE, "CACHEFILES_MSG_MAX_SIZE");
static_assert(uint32_t{fscache::kOpOpen} == uint32_t{CACHEFILES_OP_OPEN} &&
                  uint32_t{fscache::kOpClose} == uint32_t{CACHEFILES_OP_CLOSE} &&
                  uint32_t{fscache::kOpRead} == uint32_t{CACHEFILES_OP_READ},
              "enum cachefiles_opcode");
static_assert(sizeof(struct cachefiles_msg) == sizeof(fscache::Msg) &&
                  offsetof(struct cachefiles_msg, object_id) == offsetof(fscache::Msg, object_id) &&
                  offsetof(struct cachefiles_msg, data) == sizeof(fscache::Msg),
              "struct cachefiles_msg");
static_assert(sizeof(struct cachefiles_open) == sizeof(fscache::OpenPayload) &&
                  offsetof(struct cachefiles_open, fd) == offsetof(fscache::OpenPayload, fd) &&
                  offsetof(struct cachefiles_open, data) == sizeof(fscache::OpenPayload),
              "struct cachefiles_open");
static_assert(sizeof(struct cachefiles_read) == sizeof(fscache::ReadPayload), "struct cachefiles_read");
static_assert(CACHEFILES_IOC_READ_COMPLETE == fscache::kIocReadComplete, "CACHEFILES_IOC_READ_COMPLETE");
#endif
