/**
 * Typed face of the fscache addon: the kernel side of an on-demand (fscache mode) erofs daemon.
 *
 * The addon makes the system calls Node cannot make (device commands, waiting for and decoding
 * requests, O_DIRECT-safe writes, the READ_COMPLETE ioctl); policy stays in the daemon. Failures are
 * SystemErrors carrying a positive errno, code and syscall.
 */
import { loadAddon } from '../load.ts';
import type { CachefilesMessage, FscacheBinding, SystemError, Watcher } from './binding.d.ts';

export type { CachefilesMessage, CloseMessage, OpenMessage, ReadMessage, SystemError } from './binding.d.ts';

export const CACHEFILES_DEVICE = '/dev/cachefiles';
/** Writes into a cache file start at multiples of this, and are padded to it. */
export const CACHEFILES_WRITE_ALIGN = 4096;

let loaded: FscacheBinding | undefined;

/** The addon, loaded on first use so that importing this module never fails by itself. */
export function fscacheBinding(): FscacheBinding {
  if (!loaded) {
    try {
      loaded = loadAddon<FscacheBinding>('fscache');
    } catch (err) {
      throw new Error(`cannot load the fscache addon (build it with \`npm run build:native\`): ${(err as Error).message}`, { cause: err });
    }
  }
  return loaded;
}

/** lseek(2) SEEK_DATA/SEEK_HOLE over [from, to): the ranges that hold data. */
export function dataRangesOf(fd: number, from: number, to: number): Array<[number, number]> {
  const flat = fscacheBinding().dataRanges(fd, from, to);
  const out: Array<[number, number]> = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]]);
  return out;
}

/**
 * Whether [from, to) lies in a hole: no range of `ranges` (dataRangesOf's: in order, apart) meets it.
 * A binary search: asked once a chunk, a scan of a file of many extents cost extents x chunks.
 */
export function inHole(ranges: ReadonlyArray<readonly [number, number]>, from: number, to: number): boolean {
  // The first range that ends after `from`.
  let lo = 0;
  let hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ranges[mid][1] > from) hi = mid;
    else lo = mid + 1;
  }
  return lo === ranges.length || ranges[lo][0] >= to;
}

export function isSystemError(err: unknown): err is SystemError {
  return err instanceof Error && typeof (err as SystemError).errno === 'number' && typeof (err as SystemError).code === 'string';
}

/** Adds what a failure usually means to the message; the error keeps its errno, code and syscall. */
function explain(err: unknown, hints: Partial<Record<string, string>>): unknown {
  if (isSystemError(err) && hints[err.code]) err.message += `: ${hints[err.code]}`;
  return err;
}

const OPEN_HINTS = {
  ENOENT: 'the kernel has no cachefiles device (CONFIG_CACHEFILES not built, or `modprobe cachefiles` not done)',
  ENODEV: 'the kernel has no cachefiles driver (CONFIG_CACHEFILES)',
  ENXIO: 'the kernel has no cachefiles driver (CONFIG_CACHEFILES)',
  EPERM: 'opening the cachefiles device needs CAP_SYS_ADMIN',
  EACCES: 'opening the cachefiles device needs CAP_SYS_ADMIN',
  EBUSY: 'another daemon holds the cachefiles device (it can be open once at a time)',
};
const BIND_HINTS = {
  EINVAL: "the kernel's cachefiles has no on-demand mode (CONFIG_CACHEFILES_ONDEMAND); see dmesg",
  EOPNOTSUPP: "the cache directory's filesystem cannot hold a cache (it needs xattrs, O_TMPFILE and sync_fs: not tmpfs; use ext4 or xfs)",
  ENOENT: 'the cache directory does not exist',
  EBUSY: 'a cache is already bound on this device',
};
const ONDEMAND_HINTS = {
  EOPNOTSUPP: "the kernel's cachefiles has no on-demand mode (CONFIG_CACHEFILES_ONDEMAND), or the cache is not bound ondemand",
};

export interface CachefilesOpenOptions {
  /** Defaults to /dev/cachefiles. */
  device?: string;
}

/**
 * One bound on-demand cache: the daemon's end of /dev/cachefiles.
 *
 *   const dev = CachefilesDevice.open('/var/cache/nydus', 'nydus');
 *   dev.onMessage((msg) => { ... copen / writeData + readComplete / closeFd ... });
 *
 * Closing the device makes the kernel fail every pending request with EIO; the cache stays bound
 * until the anonymous fds of all OPENs are closed as well.
 */
export class CachefilesDevice {
  /** An OPEN's fd is the kernel's anonymous fd in this process: writable with pwrite (writeData's rules). */
  readonly fdsWritable = true;
  private watcher: Watcher | null = null;
  private closed = false;

  private constructor(private readonly binding: FscacheBinding, readonly fd: number) {}

  /** Opens the device and binds `dir` (on ext4, xfs, ...) as an on-demand cache named `tag`. */
  static open(dir: string, tag: string, options: CachefilesOpenOptions = {}): CachefilesDevice {
    const binding = fscacheBinding();
    let fd: number;
    try {
      fd = binding.open(options.device ?? CACHEFILES_DEVICE);
    } catch (err) {
      throw explain(err, OPEN_HINTS);
    }
    const dev = new CachefilesDevice(binding, fd);
    try {
      dev.command(`dir ${dir}`);
      dev.command(`tag ${tag}`);
      try {
        dev.command('bind ondemand');
      } catch (err) {
        throw explain(err, BIND_HINTS);
      }
    } catch (err) {
      dev.close();
      throw err;
    }
    return dev;
  }

  /** Wraps a device fd already bound (handed over by a previous daemon); see restore(). */
  static fromFd(fd: number): CachefilesDevice {
    return new CachefilesDevice(fscacheBinding(), fd);
  }

  /** Writes one raw text command. */
  command(text: string): void {
    if (/[\0\n]/.test(text)) throw new TypeError(`cachefiles command with a NUL or newline: ${JSON.stringify(text)}`);
    this.binding.command(this.fd, text);
  }

  /**
   * Delivers every request, in the kernel's order, on the event loop. Read failures of single
   * requests (e.g. EMFILE while the kernel installed an OPEN's fd: it failed that request itself)
   * go to `onError`; without one they are thrown as uncaught exceptions. A handler that throws is an
   * uncaught exception too. Keeps the process alive until stopMessages() or close().
   */
  onMessage(handler: (msg: CachefilesMessage) => void, onError?: (err: SystemError) => void): void {
    if (this.watcher) throw new Error('onMessage: already delivering messages (stopMessages() first)');
    this.watcher = new this.binding.Watcher(this.fd, (err, msg) => {
      if (err) {
        if (!onError) throw err;
        onError(err);
      } else if (msg) {
        handler(msg);
      }
    });
  }

  stopMessages(): void {
    this.watcher?.stop();
    this.watcher = null;
  }

  /** One pending request or null, without waiting (for tests and tools; daemons use onMessage). */
  readMessage(): CachefilesMessage | null {
    return this.binding.readMessage(this.fd);
  }

  /** Answers an OPEN: the object's size in bytes, or a negative errno to fail the mount/open. */
  copen(msgId: number, sizeOrNegErrno: number): void {
    if (!Number.isSafeInteger(msgId) || msgId < 0) throw new RangeError(`copen: bad msgId ${msgId}`);
    if (!Number.isSafeInteger(sizeOrNegErrno) || sizeOrNegErrno < -4095) {
      throw new RangeError(`copen: ${sizeOrNegErrno} is neither a size nor a negative errno`);
    }
    try {
      this.command(`copen ${msgId},${sizeOrNegErrno}`);
    } catch (err) {
      throw explain(err, ONDEMAND_HINTS);
    }
  }

  /**
   * Writes `data` at `offset` (a multiple of 4096) of an object's cache file through the OPEN's
   * anonymous fd, zero-padding the tail to 4096. Runs on a worker; leave `data` untouched until the
   * Promise settles, then call readComplete.
   */
  writeData(fd: number, offset: number, data: Uint8Array): Promise<void> {
    return this.binding.writeAligned(fd, data, offset);
  }

  /** Tells the kernel the range of READ `msgId` is in the cache file. */
  readComplete(fd: number, msgId: number): void {
    this.binding.readComplete(fd, msgId);
  }

  /** Closes an OPEN's anonymous fd (on CLOSE, or when the daemon drops the object). */
  closeFd(fd: number): void {
    this.binding.close(fd);
  }

  /** The ranges of [from, to) that an object's cache file really holds (SEEK_DATA/SEEK_HOLE). */
  dataRanges(fd: number, from: number, to: number): Array<[number, number]> {
    const flat = this.binding.dataRanges(fd, from, to);
    const out: Array<[number, number]> = [];
    for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]]);
    return out;
  }

  /** After a daemon restart with a handed-over fd: have the kernel resend requests in flight. */
  restore(): void {
    try {
      this.command('restore');
    } catch (err) {
      throw explain(err, ONDEMAND_HINTS);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopMessages();
    this.binding.close(this.fd);
  }
}

/** How long a supervisor may take to accept and answer before the hand-over fails. */
const SUPERVISOR_TIMEOUT_MS = 10_000;
/** Largest daemon state taken back from a supervisor. */
const SUPERVISOR_STATE_MAX = 64 << 20;

/** Sends a daemon's state and its /dev/cachefiles fd to a supervisor (nydus-snapshotter's sendfd). */
export function sendStateToSupervisor(socketPath: string, state: Uint8Array, fd: number): Promise<void> {
  return fscacheBinding().sendState(socketPath, state, fd, SUPERVISOR_TIMEOUT_MS);
}

/** Takes a daemon's state and the /dev/cachefiles fd back from a supervisor (takeover). */
export function receiveStateFromSupervisor(socketPath: string): Promise<{ data: Buffer; fd: number }> {
  return fscacheBinding().receiveState(socketPath, SUPERVISOR_STATE_MAX, SUPERVISOR_TIMEOUT_MS);
}
