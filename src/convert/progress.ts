/**
 * Per-layer progress on a terminal: bytes pulled, rate, and state, redrawn in place a few times a
 * second. Off a terminal nothing is drawn (the pino logs say the same).
 */
import { Transform, type Readable } from 'node:stream';

interface LayerLine {
  name: string;
  total: number;
  done: number;
  started: number;
  state: string;
  /** When the pull ended (the rate is the pull's). */
  pulled?: number;
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}

export class LayerProgress {
  private readonly lines: LayerLine[] = [];
  private drawn = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly out: NodeJS.WriteStream | null) {
    if (out) this.timer = setInterval(() => this.draw(), 250).unref();
  }

  /** Counts the bytes of `stream` for a new line; returns the stream to read and a state setter. */
  track(name: string, total: number, stream: Readable): { stream: Readable; state: (s: string) => void } {
    if (!this.out) return { stream, state: () => undefined };
    const line: LayerLine = { name, total, done: 0, started: Date.now(), state: 'pulling' };
    this.lines.push(line);
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        line.done += chunk.length;
        cb(null, chunk);
      },
    });
    stream.on('error', (e) => counter.destroy(e));
    const state = (s: string) => {
      line.pulled ??= Date.now();
      line.state = s;
    };
    return { stream: stream.pipe(counter), state };
  }

  private draw(): void {
    if (!this.out) return;
    let text = this.drawn > 0 ? `\x1b[${this.drawn}A` : '';
    for (const l of this.lines) {
      const secs = Math.max(0.001, ((l.pulled ?? Date.now()) - l.started) / 1000);
      text += `\x1b[2K${l.name}: ${mib(l.done)} / ${mib(l.total)}, ${mib(l.done / secs)}/s, ${l.state}\n`;
    }
    this.drawn = this.lines.length;
    this.out.write(text);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.draw();
  }
}
