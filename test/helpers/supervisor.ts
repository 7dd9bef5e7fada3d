/**
 * Drives kernel-test/guest/supervisor.py, an independent implementation of nydus-snapshotter's
 * supervisor (it keeps a daemon's state bytes and fd): `recv` waits for a daemon's sendfd, `send`
 * hands them to a daemon's takeover. Each command answers one line.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../kernel-test/guest/supervisor.py');

export class TestSupervisor {
  private readonly proc: ChildProcess;
  private readonly lines: string[] = [];
  private waiting: ((line: string) => void) | null = null;

  constructor(readonly socketPath: string) {
    this.proc = spawn('python3', [script, socketPath], { stdio: ['pipe', 'pipe', 'inherit'] });
    let buf = '';
    this.proc.stdout!.setEncoding('utf8');
    this.proc.stdout!.on('data', (d: string) => {
      buf += d;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const w = this.waiting;
        this.waiting = null;
        if (w) w(line);
        else this.lines.push(line);
      }
    });
  }

  /** Starts listening for `cmd` ('recv' or 'send'); resolves once the socket is there. */
  async listen(cmd: 'recv' | 'send'): Promise<void> {
    fs.rmSync(this.socketPath, { force: true });
    this.proc.stdin!.write(`${cmd}\n`);
    for (let i = 0; i < 250 && !fs.existsSync(this.socketPath); i++) await new Promise((r) => setTimeout(r, 20));
    if (!fs.existsSync(this.socketPath)) throw new Error(`supervisor did not listen on ${this.socketPath}`);
  }

  /** The answer to the last command: `received <bytes> <fd inode>`, `sent <bytes>` or `error ...`. */
  answer(): Promise<string> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    return new Promise((r) => (this.waiting = r));
  }

  stop(): void {
    this.proc.stdin!.end('quit\n');
  }
}
