/**
 * Typed face of the addon's fanotify calls: the kernel side of the pre-content front end (Linux
 * 6.14+). A group fd, FAN_PRE_ACCESS marks on cache files, events read on a thread and delivered on
 * the event loop, answers by event fd, the journal of pending events; plus the file-backed EROFS
 * mount(2) the front end needs. Failures are
 * SystemErrors carrying a positive errno, with what a failure usually means added to the message.
 */
import type { EventJournal, FanotifyEvent, FanotifyReader, FscacheBinding, SystemError } from './binding.d.ts';
import { fscacheBinding, isSystemError } from './index.ts';

export type { EventJournal, FanotifyEvent } from './binding.d.ts';

/** FAN_PRE_ACCESS: a range of a marked file is about to be read (or written). */
export const FAN_PRE_ACCESS = 0x00100000;
/** FAN_Q_OVERFLOW (no fd): events were lost (cannot happen with the unlimited queue we ask for). */
export const FAN_Q_OVERFLOW = 0x00004000;

const MS_RDONLY = 1;

/** The bytes one bit of setReadyBlocks' bitmap stands for (fanotify.h, ReadyBlocks::kBlockShift). */
export const READY_BLOCK = 4096;

function explain(err: unknown, hints: Partial<Record<string, string>>): unknown {
  if (isSystemError(err) && hints[err.code]) err.message += `: ${hints[err.code]}`;
  return err;
}

const MISSING_PRE_CONTENT = 'the kernel has no fanotify pre-content events (FAN_CLASS_PRE_CONTENT with FAN_PRE_ACCESS: '
  + 'Linux >= 6.14 built with CONFIG_FANOTIFY and CONFIG_FANOTIFY_ACCESS_PERMISSIONS)';
const INIT_HINTS = {
  EINVAL: MISSING_PRE_CONTENT,
  ENOSYS: 'the kernel has no fanotify (CONFIG_FANOTIFY)',
  EPERM: 'a pre-content fanotify group needs CAP_SYS_ADMIN',
  EMFILE: 'too many fanotify groups (fs.fanotify.max_user_groups)',
};
const NO_HSM = 'this file system does not allow pre-content marks (ext4, xfs and btrfs do; tmpfs does not): put the cache work_dir on one of those';
const MARK_HINTS = {
  EINVAL: MISSING_PRE_CONTENT,
  // libuv names EOPNOTSUPP (= ENOTSUP on Linux) ENOTSUP.
  ENOTSUP: NO_HSM,
  EOPNOTSUPP: NO_HSM,
  ENOENT: 'no such file',
  ENOSPC: 'too many fanotify marks (fs.fanotify.max_user_marks)',
};

/** One pre-content fanotify group: the daemon's end of the kernel's FAN_PRE_ACCESS events. */
export class FanotifyGroup {
  private reader: FanotifyReader | null = null;
  private closed = false;
  /** setReadyBlocks' files, handed to each reader onEvents makes. */
  private readonly ready = new Map<string, { dev: number; ino: number; bits: Uint8Array }>();

  private constructor(private readonly binding: FscacheBinding, readonly fd: number) {}

  /** A new group; fails naming the missing kernel feature where pre-content events are not there. */
  static open(): FanotifyGroup {
    const binding = fscacheBinding();
    try {
      return new FanotifyGroup(binding, binding.fanotifyInit());
    } catch (err) {
      throw explain(err, INIT_HINTS);
    }
  }

  /** A group fd inherited from the supervisor that keeps it (its marks and pending events with it). */
  static fromFd(fd: number): FanotifyGroup {
    return new FanotifyGroup(fscacheBinding(), fd);
  }

  /** FAN_PRE_ACCESS on one file. Only files opened after this raise events (the kernel decides at open). */
  mark(path: string): void {
    try {
      this.binding.fanotifyMark(this.fd, true, path);
    } catch (err) {
      throw explain(err, MARK_HINTS);
    }
  }

  unmark(path: string): void {
    this.binding.fanotifyMark(this.fd, false, path);
  }

  /**
   * Delivers events, in the kernel's order, on the event loop; they are read on a thread of the
   * addon's, which answers those setReadyBlocks allows and records the others in `journal` (when
   * given) before they are delivered. Read failures go to `onError`. Keeps the process alive until
   * stopEvents() or close().
   */
  onEvents(handler: (events: FanotifyEvent[]) => void, onError: (err: SystemError) => void, journal?: EventJournal): void {
    if (this.reader) throw new Error('onEvents: already delivering events (stopEvents() first)');
    this.reader = new this.binding.FanotifyReader(this.fd, (err, events) => {
      if (err) onError(err);
      else if (events) handler(events);
    }, journal);
    for (const { dev, ino, bits } of this.ready.values()) this.reader.setReadyBlocks(dev, ino, bits);
  }

  /**
   * From now on, events for blocks of the file (by device and inode) whose bit is set in `bits` (one
   * per 4096 bytes, bit b of byte b >> 3) are answered FAN_ALLOW as they are read, and delivered with
   * `answered` set; the caller sets bits only for bytes in the file. null: every event goes to the handler.
   */
  setReadyBlocks(dev: number, ino: number, bits: Uint8Array | null): void {
    const key = `${dev}:${ino}`;
    if (bits) this.ready.set(key, { dev, ino, bits });
    else this.ready.delete(key);
    this.reader?.setReadyBlocks(dev, ino, bits);
  }

  /** Stops reading; the events read and not yet delivered are delivered first. */
  stopEvents(): void {
    this.reader?.stop();
    this.reader = null;
  }

  /** Pending events or null, without waiting (for tests; daemons use onEvents). */
  readEvents(): FanotifyEvent[] | null {
    return this.binding.readFanotifyEvents(this.fd);
  }

  /**
   * Answers a permission event by its fd number: errno 0 allows the access, any other fails it
   * (FAN_DENY_ERRNO; the kernel accepts EIO, EPERM, EBUSY, ETXTBSY, EAGAIN, ENOSPC, EDQUOT). Does not
   * close the event fd.
   */
  respond(eventFd: number, errno: number): void {
    this.binding.fanotifyRespond(this.fd, eventFd, errno);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopEvents();
    this.binding.close(this.fd);
  }
}

/** The addon's writer of the journal of pending events, on `fd` (open O_APPEND) of the file at `path`. */
export function openEventJournal(fd: number, path: string): EventJournal {
  return new (fscacheBinding().EventJournal)(fd, path);
}

/** Another fd number for the same open file (an event fd kept for later writes raises no events either). */
export function dupFd(fd: number): number {
  return fscacheBinding().dup(fd);
}

export function closeFd(fd: number): void {
  fscacheBinding().close(fd);
}

/** Whether a path can be a `device=` option of a mount's data: those end at a comma or white space. */
export const nameableAsDevice = (path: string): boolean => !/[,\s]/.test(path);

/**
 * A read-only file-backed EROFS mount: mount(2) with the bootstrap file as source and each blob's
 * file as `device=`, in blob table order (no loop device).
 */
export function mountErofsFileBacked(bootstrap: string, devices: readonly string[], target: string): void {
  const data = devices.map((d) => `device=${d}`).join(',');
  if (!devices.every(nameableAsDevice)) throw new Error(`cannot mount ${target}: a device path holds a comma or white space (${devices.join(' ')})`);
  fscacheBinding().mount(bootstrap, target, 'erofs', MS_RDONLY, data);
}

/** umount2(2) without MNT_DETACH: a busy mount fails with EBUSY and stays. */
export function umountPath(target: string): void {
  fscacheBinding().umount(target, 0);
}

/**
 * Keeps fd number `n` from new fds while a predecessor's event of that number is answered (the kernel
 * matches answers by number alone). Returns a release function.
 */
export function reserveFdNumber(n: number): () => void {
  const binding = fscacheBinding();
  return binding.reserveFd(n) ? () => binding.close(n) : () => undefined;
}
