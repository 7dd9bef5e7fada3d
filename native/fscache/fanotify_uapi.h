// The kernel's fanotify pre-content interface (include/uapi/linux/fanotify.h, Linux 6.14+), mirrored
// here because libc's headers (and this machine's) predate it. Sizes and offsets are asserted below,
// and against the system header where it has them. No other file of the project knows these layouts:
// events leave the addon as plain decoded objects.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fscache {

// fanotify_init(2) flags.
constexpr unsigned kFanCloexec = 0x00000001;
constexpr unsigned kFanNonblock = 0x00000002;
constexpr unsigned kFanClassPreContent = 0x00000008;  // permission and pre-content events
constexpr unsigned kFanUnlimitedQueue = 0x00000010;

// fanotify_mark(2) flags and the one event mask we use.
constexpr unsigned kFanMarkAdd = 0x00000001;
constexpr unsigned kFanMarkRemove = 0x00000002;
constexpr uint64_t kFanPreAccess = 0x00100000;  // before a range of a file is read (or written)
constexpr uint64_t kFanQOverflow = 0x00004000;

constexpr uint8_t kFanotifyMetadataVersion = 3;
constexpr uint8_t kFanEventInfoTypeRange = 6;

// Responses: FAN_ALLOW, FAN_DENY, and FAN_DENY_ERRNO(e) = FAN_DENY | (e & 0xff) << 24 (6.14+, for
// pre-content groups; the kernel accepts EIO, EPERM, EBUSY, ETXTBSY, EAGAIN, ENOSPC, EDQUOT).
constexpr uint32_t kFanAllow = 0x01;
constexpr uint32_t kFanDeny = 0x02;
constexpr uint32_t kFanErrnoShift = 24;
constexpr uint32_t kFanErrnoMask = 0xff;

// Header of every event read from the group fd; several per read(2).
struct EventMetadata {
  uint32_t event_len;     // bytes of this event, info records included
  uint8_t vers;           // kFanotifyMetadataVersion
  uint8_t reserved;
  uint16_t metadata_len;  // bytes of this header
  uint64_t mask;          // FAN_* bits
  int32_t fd;             // an fd of the file, installed in the reader's fd table (FAN_NOFD: -1)
  int32_t pid;            // the tgid of the process that caused the event
};

struct EventInfoHeader {
  uint8_t info_type;  // FAN_EVENT_INFO_TYPE_*
  uint8_t pad;
  uint16_t len;  // bytes of the record, header included
};

// The byte range a FAN_PRE_ACCESS event is about.
struct EventInfoRange {
  EventInfoHeader hdr;
  uint32_t pad;
  uint64_t offset;  // bytes
  uint64_t count;   // bytes
};

// Written to the group fd to answer a permission event.
struct Response {
  int32_t fd;  // the event's fd number (the kernel matches by number)
  uint32_t response;
};

static_assert(sizeof(EventMetadata) == 24 && offsetof(EventMetadata, mask) == 8 && offsetof(EventMetadata, fd) == 16 &&
                  offsetof(EventMetadata, pid) == 20,
              "struct fanotify_event_metadata layout");
static_assert(sizeof(EventInfoHeader) == 4, "struct fanotify_event_info_header");
static_assert(sizeof(EventInfoRange) == 24 && offsetof(EventInfoRange, offset) == 8 && offsetof(EventInfoRange, count) == 16,
              "struct fanotify_event_info_range layout");
static_assert(sizeof(Response) == 8, "struct fanotify_response");

}  // namespace fscache

#if __has_include(<linux/fanotify.h>)
#include <linux/fanotify.h>
static_assert(sizeof(struct fanotify_event_metadata) == sizeof(fscache::EventMetadata) &&
                  offsetof(struct fanotify_event_metadata, fd) == offsetof(fscache::EventMetadata, fd),
              "struct fanotify_event_metadata");
static_assert(sizeof(struct fanotify_response) == sizeof(fscache::Response), "struct fanotify_response");
static_assert(FAN_CLASS_PRE_CONTENT == fscache::kFanClassPreContent && FAN_ALLOW == fscache::kFanAllow &&
                  FAN_DENY == fscache::kFanDeny && FANOTIFY_METADATA_VERSION == fscache::kFanotifyMetadataVersion,
              "fanotify constants");
#ifdef FAN_PRE_ACCESS
static_assert(FAN_PRE_ACCESS == fscache::kFanPreAccess, "FAN_PRE_ACCESS");
static_assert(FAN_EVENT_INFO_TYPE_RANGE == fscache::kFanEventInfoTypeRange, "FAN_EVENT_INFO_TYPE_RANGE");
#endif
#ifdef FAN_DENY_ERRNO
static_assert(FAN_DENY_ERRNO(5) == (fscache::kFanDeny | (5u << fscache::kFanErrnoShift)), "FAN_DENY_ERRNO");
#endif
#endif
