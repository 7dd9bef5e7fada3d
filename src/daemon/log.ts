/**
 * nydusd's logger: pino to stderr, or to `--log-file` rotated at `--log-rotation-size` MiB as nydusd
 * does (the file is renamed to `<file>.1`, older ones shift up, ROTATED_KEPT are kept). And how the
 * daemon makes the directories it is given (ensureDirectory): the supervisor loads this module, so it
 * stays light.
 */
import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { NydusError } from '../../erofs/errors.ts';

/**
 * File systems that hold no files of their own (linux/magic.h): no place for a state, a cache, a log
 * or a mount. Node 20's fs.mkdirSync(recursive) never returns for a missing directory under /proc
 * (mkdir(2) says ENOENT while the parent exists, and libuv tries again for good).
 */
const PSEUDO_FS = new Map<number, string>([
  [0x9fa0, 'proc'], [0x62656572, 'sysfs'], [0x64626720, 'debugfs'], [0x74726163, 'tracefs'], [0x73636673, 'securityfs'],
  [0xf97cff8c, 'selinuxfs'], [0x43415d53, 'smackfs'], [0x27e0eb, 'cgroup'], [0x63677270, 'cgroup2'], [0x1cd1, 'devpts'],
  [0xcafe4a11, 'bpf'], [0x6165676c, 'pstore'], [0x62656570, 'configfs'], [0x65735543, 'fusectl'], [0xde5e81e4, 'efivarfs'],
  [0x42494e4d, 'binfmt_misc'], [0x6e736673, 'nsfs'], [0x19800202, 'mqueue'], [0x0187, 'autofs'], [0x67596969, 'rpc_pipefs'],
]);

/** The pseudo file system (PSEUDO_FS) `p` is on, or would be made on (its nearest existing ancestor's); undefined for any other. */
export function pseudoFsOf(p: string): string | undefined {
  let at = path.resolve(p);
  for (;;) {
    let found = true;
    try {
      found = fs.statSync(at, { throwIfNoEntry: false }) !== undefined;
    } catch {
      // ENOTDIR, EACCES...: what is there is judged by statfs below, and mkdir says the rest.
    }
    if (found || path.dirname(at) === at) break;
    at = path.dirname(at);
  }
  try {
    return PSEUDO_FS.get(fs.statfsSync(at).type >>> 0);
  } catch {
    return undefined;
  }
}

/** Bad path text, as one phrase (a NUL byte, longer than PATH_MAX), or undefined. */
export function badPathText(p: string): string | undefined {
  if (p.includes('\0')) return 'holds a NUL byte';
  if (Buffer.byteLength(p) >= 4096) return `is ${Buffer.byteLength(p)} bytes long (at most 4095)`;
  return undefined;
}

/**
 * Makes `dir` (and its parents) unless it is there; `what` names it in errors ("--fanotify directory",
 * "cache work_dir"). A directory on a pseudo file system is refused before mkdir is tried (see
 * PSEUDO_FS); anything that cannot be made, or is not a directory, is one clear NydusError.
 */
export function ensureDirectory(dir: string, what: string): void {
  const bad = badPathText(dir);
  if (bad) throw new NydusError(`${what} ${JSON.stringify(dir.slice(0, 200))} ${bad}`);
  const pseudo = pseudoFsOf(dir);
  if (pseudo) throw new NydusError(`${what} ${dir} is on ${pseudo}, a pseudo file system that holds no files: give a directory on a disk file system`);
  const stat = () => {
    try {
      return fs.statSync(dir, { throwIfNoEntry: false });
    } catch (e) {
      throw new NydusError(`${what} ${dir} cannot be used: ${(e as Error).message}`);
    }
  };
  let st = stat();
  if (!st) {
    try {
      fs.mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw new NydusError(`${what} ${dir} cannot be made: ${(e as Error).message}`);
    }
    st = stat();
  }
  if (!st) throw new NydusError(`${what} ${dir} cannot be made`);
  if (!st.isDirectory()) throw new NydusError(`${what} ${dir} is not a directory`);
}

const ROTATED_KEPT = 3;

/** `text` written to `fd` until all of it is, or a write fails: how many bytes went, and the failure. */
function writeWhole(fd: number, text: string): { done: number; error: NodeJS.ErrnoException | null } {
  const bytes = Buffer.from(text);
  let done = 0;
  try {
    while (done < bytes.length) done += fs.writeSync(fd, bytes, done);
    return { done, error: null };
  } catch (e) {
    return { done, error: e as NodeJS.ErrnoException };
  }
}

/**
 * A synchronous append-only log file that starts anew once it would pass `maxBytes` (0: never).
 * Nothing it meets is thrown to the code that logs (pino writes from inside its call): on a full disk
 * a line is dropped, and the next line written is preceded by one that says how many were lost. A
 * line written in part is cut off again (ftruncate needs no room), so every line is one JSON object.
 */
export class RotatingLogFile {
  private fd: number;
  private size: number;
  /** Lines not written whole since the last one that was. */
  private lost = 0;

  constructor(private readonly file: string, private readonly maxBytes: number) {
    ensureDirectory(path.dirname(path.resolve(file)), '--log-file directory');
    this.fd = fs.openSync(file, 'a', 0o640);
    this.size = fs.fstatSync(this.fd).size;
  }

  write(line: string): boolean {
    if (this.maxBytes > 0 && this.size > 0 && this.size + Buffer.byteLength(line) > this.maxBytes) this.rotate();
    if (this.lost && this.append(`${JSON.stringify({ level: 40, time: Date.now(), pid: process.pid, lost: this.lost, msg: 'log lines lost: they could not be written (a full disk?)' })}\n`)) this.lost = 0;
    if (this.lost || !this.append(line)) this.lost++;
    return true;
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  /** Whether `text` was written whole; if not, none of it is left in the file. */
  private append(text: string): boolean {
    const { done, error } = writeWhole(this.fd, text);
    if (!error) {
      this.size += done;
      return true;
    }
    if (done > 0) {
      try {
        // (From the file's own size: `size` counts from the last rotation, which may have failed.)
        fs.ftruncateSync(this.fd, fs.fstatSync(this.fd).size - done);
      } catch {
        // Left cut short: the next line starts on a line of its own at least.
        this.size += done;
        this.append('\n');
      }
    }
    return false;
  }

  /**
   * The file moves to .1 (.1 to .2, ...) and a new one is opened. A failure leaves lines going to the
   * file as it is (until it has grown by maxBytes again); the old fd is closed only once the new one
   * is open, so no line goes to a closed fd (whose number may by then be another file's).
   */
  private rotate(): void {
    try {
      for (let i = ROTATED_KEPT - 1; i >= 1; i--) {
        if (fs.existsSync(`${this.file}.${i}`)) fs.renameSync(`${this.file}.${i}`, `${this.file}.${i + 1}`);
      }
      fs.renameSync(this.file, `${this.file}.1`);
      const fd = fs.openSync(this.file, 'a', 0o640);
      fs.closeSync(this.fd);
      this.fd = fd;
    } catch { /* written on where it is */ }
    this.size = 0;
  }
}

/**
 * Log lines to stderr, written synchronously and dropped when it cannot take them: a reader that is
 * gone (EPIPE) ends the writing, a full non-blocking pipe (EAGAIN) loses the line. pino.destination()
 * retried a write to a pipe without a reader for good when the process exited: a daemon whose stderr
 * reader had died (a restarted snapshotter, say) never exited on SIGTERM.
 */
export class StderrLog {
  private gone = false;

  constructor(private readonly fd = 2) {}

  write(line: string): boolean {
    if (this.gone) return true;
    const { error } = writeWhole(this.fd, line);
    if (error && error.code !== 'EAGAIN') this.gone = true;
    return true;
  }
}

export function makeLogger(level: string, file?: string, rotationMiB = 0): Logger {
  const base = { level, base: { pid: process.pid } };
  if (!file) return pino(base, new StderrLog());
  return pino(base, new RotatingLogFile(file, rotationMiB * 1024 * 1024));
}
