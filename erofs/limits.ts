/**
 * What one inode of the format can hold, named once: the widths of erofs_fs.h's fields and the rules
 * of the kernel that reads them (fs/erofs, and the VFS above it). Xattr limits are in xattr.ts, the
 * chunk count of a blob in blobmeta.ts, EROFS_NAME_LEN in dirent.ts.
 */
/** i_uid and i_gid of erofs_inode_extended are __le32 (the only inode layout written here). */
export const EROFS_ID_MAX = 0xffff_ffff;

/**
 * i_u.rdev is a __le32 holding new_encode_dev(): the kernel's dev_t has MINORBITS 20, so a 12-bit
 * major and a 20-bit minor. No Linux device number is larger.
 */
export const EROFS_DEV_MAJOR_MAX = 0xfff;
export const EROFS_DEV_MINOR_MAX = 0xf_ffff;
export const EROFS_RDEV_MAX = 0xffff_ffff;

/**
 * Longest symlink target: PATH_MAX - 1. A target of a block or more is read by page_get_link, which
 * ends it at PAGE_SIZE - 1 bytes (nd_terminate_link), and symlink(2) refuses one of PATH_MAX bytes.
 */
export const EROFS_SYMLINK_MAX = 4095;

/**
 * Longest path of an entry from the root, its leading '/' counted: PATH_MAX - 1. The VFS refuses a
 * longer one (ENAMETOOLONG), so no process could name such a file by its path.
 */
export const EROFS_PATH_MAX = 4095;

/** i_mtime_nsec: nanoseconds of a timespec. */
export const EROFS_NSEC_MAX = 999_999_999;

/** A device's major and minor numbers, or null if EROFS's rdev cannot hold them. */
export function devNumberProblem(major: number, minor: number): string | null {
  if (major <= EROFS_DEV_MAJOR_MAX && minor <= EROFS_DEV_MINOR_MAX) return null;
  return `device number ${major}:${minor} does not fit EROFS's rdev (major at most ${EROFS_DEV_MAJOR_MAX}, minor at most ${EROFS_DEV_MINOR_MAX})`;
}

/** An inode's rdev (the Linux new encoding, as st_rdev gives it), or null if it does not fit i_u.rdev. */
export function rdevProblem(rdev: number): string | null {
  if (Number.isSafeInteger(rdev) && rdev >= 0 && rdev <= EROFS_RDEV_MAX) return null;
  if (!Number.isSafeInteger(rdev) || rdev < 0) return `device number ${rdev} is not a device number`;
  // glibc's 64-bit dev_t: major in bits 8..19 and 32..63, minor in bits 0..7 and 20..31.
  const dev = BigInt(rdev);
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & 0xffff_ff00n));
  return devNumberProblem(major, minor) ?? `device number ${rdev} does not fit EROFS's rdev`;
}
