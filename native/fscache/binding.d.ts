/**
 * The raw shape of build/Release/fscache.node (native/fscache/*.cc). Import from ./index.ts instead;
 * this file only types the addon for its loader.
 */

/** OPEN: the kernel wants a cache file (an erofs bootstrap or blob) backed by the daemon. */
export interface OpenMessage {
  type: 'open';
  msgId: number;
  objectId: number;
  /** `erofs,<fsid or domain_id>`, without the trailing NUL the kernel counts in its size. */
  volumeKey: string;
  /** The fsid for the bootstrap, a device slot's tag for a blob; bytes as latin1 chars. */
  cookieKey: string;
  /** Anonymous fd on the cache file (O_DIRECT behind it), already FD_CLOEXEC; close it on CLOSE. */
  fd: number;
  flags: number;
}

/** CLOSE: the object is released; no reply. */
export interface CloseMessage {
  type: 'close';
  msgId: number;
  objectId: number;
}

/** READ: fill [offset, offset + len) of the object's cache file, then READ_COMPLETE with msgId. */
export interface ReadMessage {
  type: 'read';
  msgId: number;
  objectId: number;
  /** Bytes. */
  offset: number;
  /** Bytes. */
  len: number;
}

export type CachefilesMessage = OpenMessage | CloseMessage | ReadMessage;

/** Every failed system call: like Node's system errors, but errno is positive (as NydusError's). */
export interface SystemError extends Error {
  errno: number;
  /** 'EINVAL', 'ENOENT', ... (the names util.getSystemErrorName gives). */
  code: string;
  syscall: string;
  path?: string;
  /** On an undecodable message (EPROTO) whose header was readable. */
  msgId?: number;
  objectId?: number;
  opcode?: number;
}

export interface Watcher {
  /** Stops waiting; call before closing the device fd. Idempotent. */
  stop(): void;
}

export interface FanotifyReader extends Watcher {
  /**
   * Which 4096-byte blocks of the file (by device and inode) are in it, one bit each (bit b of byte
   * b >> 3 for block b), set by the caller as it fills the file; null forgets the file. A
   * FAN_PRE_ACCESS event for blocks all set is answered FAN_ALLOW as it is read (`answered`).
   * (stop() delivers the events read and not yet delivered first.)
   */
  setReadyBlocks(dev: number, ino: number, bits: Uint8Array | null): void;
}

/** The journal of pending fanotify events, written by the addon (event_journal.h). */
export interface EventJournal {
  /** Records an event as pending. */
  add(fd: number, dev: number, ino: number, offset: number, count: number): void;
  /** Records its answer. */
  done(fd: number): void;
  /** Why a record could not be written since the last call (the journal was emptied then), or null. */
  takeFailure(): string | null;
  /** Closes the file; records after it are dropped. */
  close(): void;
}

/** One fanotify event as read from a group fd. */
export interface FanotifyEvent {
  /** An fd of the file (read-write, raises no events itself); -1 for a queue overflow. */
  fd: number;
  /** The file's device and inode numbers (as fs.Stats gives them), fstat(2)ed when read; -1 when that failed. */
  dev: number;
  ino: number;
  /** The process whose access raised the event (its tgid). */
  pid: number;
  /** FAN_* bits; FAN_PRE_ACCESS is 0x00100000. */
  mask: number;
  /** The range about to be accessed, bytes; -1 when the event carries no range record. */
  offset: number;
  count: number;
  /** Answered FAN_ALLOW and its fd closed as it was read: its blocks were all set (FanotifyReader.setReadyBlocks). */
  answered: boolean;
}

export interface FscacheBinding {
  /** open(2) O_RDWR | O_CLOEXEC. */
  open(path: string): number;
  /** One text command per write(2): `dir <path>`, `tag <tag>`, `bind ondemand`, `copen <id>,<size>`, `restore`. */
  command(fd: number, text: string): void;
  /** One pending request, decoded, or null when none is pending (never blocks). */
  readMessage(fd: number): CachefilesMessage | null;
  /** Waits in the event loop (uv_poll) and hands over each request; keeps the loop alive until stop(). */
  Watcher: new (fd: number, callback: (err: SystemError | null, msg?: CachefilesMessage) => void) => Watcher;
  /**
   * Reads a fanotify group on a thread of its own (fanotify_reader.h): events whose blocks are set
   * are answered there, the others recorded in `journal` (when given) before they are delivered;
   * every event is delivered, in the kernel's order, on the event loop.
   */
  FanotifyReader: new (fd: number, callback: (err: SystemError | null, events?: FanotifyEvent[]) => void, journal?: EventJournal) => FanotifyReader;
  /** The journal of pending events in the file open (O_APPEND) as `fd`, at `path` (removed if it cannot be truncated). */
  EventJournal: new (fd: number, path: string) => EventJournal;
  /**
   * Copies `data` into a 4096-aligned buffer, pads it with zeros to a multiple of 4096 and pwrite(2)s
   * it at `offset` (a multiple of 4096) on a worker thread. Do not modify `data` until it settles.
   */
  writeAligned(fd: number, data: Uint8Array, offset: number): Promise<void>;
  /** ioctl(fd, CACHEFILES_IOC_READ_COMPLETE, msgId). */
  readComplete(fd: number, msgId: number): void;
  close(fd: number): void;
  /**
   * lseek(2) SEEK_DATA/SEEK_HOLE from `from` up to `to`: the byte ranges that hold data, flattened
   * as [start0, end0, start1, end1, ...]. On an OPEN's anonymous fd they describe the cache file.
   */
  dataRanges(fd: number, from: number, to: number): number[];
  /**
   * Connects to a supervisor's unix socket and sends `data` with `fd` attached (SCM_RIGHTS), then
   * closes: nydus-snapshotter's sendfd protocol. Runs on a worker; times out after `timeoutMs`.
   */
  sendState(path: string, data: Uint8Array, fd: number, timeoutMs: number): Promise<void>;
  /** Connects to a supervisor's unix socket and reads state bytes and the fd until it closes (takeover). */
  receiveState(path: string, maxBytes: number, timeoutMs: number): Promise<{ data: Buffer; fd: number }>;
  /**
   * fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE,
   * O_RDWR | O_LARGEFILE): a group fd whose events carry read-write fds.
   */
  fanotifyInit(): number;
  /** fanotify_mark(2) FAN_MARK_ADD (or FAN_MARK_REMOVE) of FAN_PRE_ACCESS on one file. */
  fanotifyMark(fd: number, add: boolean, path: string): void;
  /** The events pending on a group fd, decoded, or null when none is (never blocks). */
  readFanotifyEvents(fd: number): FanotifyEvent[] | null;
  /** Answers a permission event by its fd number: FAN_ALLOW for errno 0, else FAN_DENY_ERRNO(errno). */
  fanotifyRespond(fd: number, eventFd: number, errno: number): void;
  /** mount(2). */
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  /** umount2(2). */
  umount(target: string, flags: number): void;
  /** fcntl(F_DUPFD_CLOEXEC): another number for the same open file. */
  dup(fd: number): number;
  /** Keeps number n from being given to a new fd (/dev/null dup3'd onto it) if it is free; true if it did. */
  reserveFd(n: number): boolean;
  /** flock(2) LOCK_EX|LOCK_NB on fd: true once held, false while another open file description holds the lock. */
  tryLock(fd: number): boolean;
  /** RLIMIT_NOFILE as [soft, hard] (-1: unlimited); given both, set to them first (setrlimit). */
  nofileLimit(soft?: number, hard?: number): [number, number];
  /** prctl(PR_SET_PDEATHSIG): `signo` is sent to this process when its parent dies (0 clears it). */
  setParentDeathSignal(signo: number): void;
  /**
   * Verifies a run of chunks on libuv's thread pool: each chunk of `stored` (at the place `layout`
   * gives, 5 numbers per chunk as src/blob/verify.ts RUN_* names them) decompressed (compressor 1:
   * zstd, 2: a raw LZ4 block) or copied into `out`, then its digest (digester 0: BLAKE3, 1: SHA-256; 32 bytes per chunk
   * in `digests`, none when digestSize is 0) checked. Resolves to one entry per chunk: null, or what
   * is wrong with it (its bytes in `out` are zeroed then). Throws at once when a place lies outside
   * its buffer. The buffers must not be touched until it settles. `background`: the pool thread runs
   * the job at nice 19, then goes back to its own priority (a prefetch of the rest of a blob); given
   * as an Int32Array of 2, the thread says there which it is while lowered (raiseBackgroundThread).
   */
  verifyRunNative(stored: Uint8Array, layout: Float64Array, digests: Uint8Array, digestSize: number, out: Uint8Array, compressor: 0 | 1 | 2, digester: 0 | 1, background?: boolean | Int32Array): Promise<Array<string | null>>;
  /**
   * The same, then the chunks that passed written through `fd`: the output's byte 0 is the file's
   * byte `fileOffset` (a multiple of 4096), each stretch of chunks that follow one another in one
   * pwrite of whole pages (a failed chunk is never written). The chunks go at the first page boundary
   * of `out` (`base` in it), which needs a page more than the output; chunks come in file order, each at
   * a page boundary. A write that fails gives its error and leaves the rest of the run unwritten.
   */
  verifyRunNative(stored: Uint8Array, layout: Float64Array, digests: Uint8Array, digestSize: number, out: Uint8Array, compressor: 0 | 1 | 2, digester: 0 | 1, fd: number, fileOffset: number, background?: boolean | Int32Array): Promise<{ errors: Array<string | null>; base: number; writeError: Error | null }>;
  /**
   * The same for stored bytes that are `storedSize` bytes at `storedOffset` of the blob file `blobFd`:
   * the pool thread reads them itself (up to 64 MiB), verifies them into a pooled buffer and
   * writes the chunks that pass through `fd` (output byte 0 at its byte `fileOffset`, chunks in file
   * order at page boundaries), so no byte of the run reaches JS. A read that fails (or ends early)
   * gives `readError` and nothing else was done (`errors` null).
   */
  verifyBlobRange(blobFd: number, storedOffset: number, storedSize: number, layout: Float64Array, digests: Uint8Array, digestSize: number, compressor: 0 | 1 | 2, digester: 0 | 1, fd: number, fileOffset: number, background?: boolean | Int32Array): Promise<{ readError: Error | null; errors: Array<string | null> | null; writeError: Error | null }>;
  /**
   * A warm-up job on each of `threads` libuv pool threads (a 1 MiB zstd chunk decompressed into a
   * pooled buffer and hashed), so that no reader waits for a thread's first verification; a Promise
   * per job, of whether BLAKE3 hashes 16 chunks at a time in vector lanes here (else a chunk at a
   * time: whichever a timing found faster).
   */
  warmUp(threads: number): Array<Promise<boolean>>;
  /**
   * The pool thread of a background job that was passed `told` (an Int32Array of 2) gets its own
   * priority back, or, when the job has not lowered it yet, the job never will: a reader now waits
   * for that job. False when it was raised already.
   */
  raiseBackgroundThread(told: Int32Array): boolean;
  /** Detaches an ArrayBuffer: its memory is freed now, not at a GC, and every view of it becomes empty. */
  releaseBuffer(ab: ArrayBuffer): void;
  /** `src` as one raw LZ4 block (nydus's lz4_block) into `dst`: its size, or 0 when it does not fit. */
  lz4Compress(src: Uint8Array, dst: Uint8Array): number;
  /** A raw LZ4 block into `dst`: the bytes made, or -1 for a corrupt block. */
  lz4Decompress(src: Uint8Array, dst: Uint8Array): number;
  /** CACHEFILES_MSG_MAX_SIZE: the largest message the kernel sends, bytes. */
  readonly MSG_MAX_SIZE: number;
}
