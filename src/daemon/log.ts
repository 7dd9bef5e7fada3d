/**
 * nydusd's logger: pino to stderr, or to `--log-file` rotated at `--log-rotation-size` MiB as nydusd
 * does (the file is renamed to `<file>.1`, older ones shift up, ROTATED_KEPT are kept).
 */
import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';

const ROTATED_KEPT = 3;

/** A synchronous append-only log file that starts anew once it would pass `maxBytes` (0: never). */
export class RotatingLogFile {
  private fd: number;
  private size: number;

  constructor(private readonly file: string, private readonly maxBytes: number) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.fd = fs.openSync(file, 'a', 0o640);
    this.size = fs.fstatSync(this.fd).size;
  }

  write(line: string): boolean {
    const bytes = Buffer.byteLength(line);
    if (this.maxBytes > 0 && this.size > 0 && this.size + bytes > this.maxBytes) this.rotate();
    fs.writeSync(this.fd, line);
    this.size += bytes;
    return true;
  }

  private rotate(): void {
    fs.closeSync(this.fd);
    for (let i = ROTATED_KEPT - 1; i >= 1; i--) {
      if (fs.existsSync(`${this.file}.${i}`)) fs.renameSync(`${this.file}.${i}`, `${this.file}.${i + 1}`);
    }
    fs.renameSync(this.file, `${this.file}.1`);
    this.fd = fs.openSync(this.file, 'a', 0o640);
    this.size = 0;
  }
}

export function makeLogger(level: string, file?: string, rotationMiB = 0): Logger {
  const base = { level, base: { pid: process.pid } };
  if (!file) return pino(base, pino.destination(2));
  return pino(base, new RotatingLogFile(file, rotationMiB * 1024 * 1024));
}
