/**
 * The events a fanotify daemon has read and not yet answered, in a file that outlives the process.
 *
 * Why: when a worker dies mid-event, its events stay pending in the kernel (the supervisor keeps the
 * group fd, so the group is not released, which would allow them: readers would see holes as zeros),
 * but their fds die with the worker and no one can read them again. The kernel matches an answer to
 * a pending event by the fd number alone (fanotify_user.c, process_access_response), so a successor
 * that knows the numbers and ranges can fill the ranges and answer them. Each event is written here
 * right after it is read (a synchronous write on the same turn of the event loop; the page cache is
 * enough, a process crash does not lose it), and its answer right after it is given.
 *
 * Format: one line per record, `+ <fd> <dev> <ino> <offset> <count>` and `- <fd>`. The file is
 * truncated when nothing is pending and it has grown past 256 KiB (event_journal.h), so it stays small without a
 * truncate per event.
 */
import fs from 'node:fs';
import { type EventJournal, openEventJournal } from '../../../native/fscache/fanotify.ts';
import { RepeatedFailure } from '../repeated-failure.ts';

export interface JournaledEvent {
  /** The event's fd number in the process that read it. */
  fd: number;
  /** The marked file, by device and inode number. */
  dev: number;
  ino: number;
  offset: number;
  count: number;
}

/**
 * The most of a journal read back: its end. The journal is truncated whenever nothing is pending past
 * 256 KiB, so a real one is far smaller (a pending event is a line of about 40 bytes); a record's
 * answer always comes after it, so the end holds every event still pending.
 */
export const JOURNAL_READ_MAX = 64 << 20;

/** The last `max` bytes of a file as text, from the first whole line in them. */
function readTail(file: string, max: number): string {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    const size = fs.fstatSync(fd).size;
    const from = Math.max(0, size - max);
    const buf = Buffer.alloc(size - from);
    let got = 0;
    for (let n; got < buf.length && (n = fs.readSync(fd, buf, got, buf.length - got, from + got)) > 0;) got += n;
    const text = buf.toString('latin1', 0, got);
    return from === 0 ? text : text.slice(text.indexOf('\n') + 1);
  } finally {
    fs.closeSync(fd);
  }
}

export class PendingEventJournal {
  /** The addon's writer (event_journal.h): the group's reader thread records events through it too. */
  readonly native: EventJournal;
  /** Records that could not be written (reported once a minute). */
  private readonly failures = new RepeatedFailure();

  /**
   * Opens the journal for appending; `keep` records are the still pending ones carried over.
   * `onFailure` is told when a record cannot be written (a full disk; at most once a minute: emptied,
   * the journal has room again for a while); nothing of it is thrown to the daemon's work.
   */
  constructor(readonly file: string, keep: readonly JournaledEvent[] = [], private readonly onFailure: (e: Error) => void = () => undefined) {
    const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_APPEND, 0o600);
    try {
      this.native = openEventJournal(fd, file);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    for (const e of keep) this.add(e);
  }

  /** The events a dead predecessor left unanswered (last record per fd number wins). */
  static read(file: string): JournaledEvent[] {
    let text: string;
    try {
      text = readTail(file, JOURNAL_READ_MAX);
    } catch {
      return [];
    }
    const open = new Map<number, JournaledEvent>();
    for (const line of text.split('\n')) {
      const f = line.split(' ');
      if (f[0] === '+' && f.length === 6) {
        const [fd, dev, ino, offset, count] = f.slice(1).map(Number);
        if ([fd, dev, ino, offset, count].every(Number.isSafeInteger)) open.set(fd, { fd, dev, ino, offset, count });
      } else if (f[0] === '-' && f.length === 2) {
        open.delete(Number(f[1]));
      }
    }
    return [...open.values()];
  }

  /** An event read and not answered (the reader thread records those it reads itself). */
  add(e: JournaledEvent): void {
    this.native.add(e.fd, e.dev, e.ino, e.offset, e.count);
    this.report();
  }

  done(fd: number): void {
    this.native.done(fd);
    this.report();
  }

  close(): void {
    this.native.close();
  }

  private report(): void {
    const failure = this.native.takeFailure();
    if (failure !== null && this.failures.occur()) this.onFailure(new Error(failure));
  }
}
