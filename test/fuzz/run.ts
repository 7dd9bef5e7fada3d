/**
 * `npm run fuzz`: structure-aware fuzzing of bootstraps and blobs through every reader (see
 * cases.ts). The cases run on a worker thread with a heap limit; the main thread is the watchdog: a
 * case that takes longer than the time bound is a hang, a worker that runs out of memory is a
 * blow-up, an exception other than NydusError is a crash. Every failing case is printed and appended
 * to test/fuzz/regressions.json, which test/fuzz-regressions.test.ts replays on every test run.
 *
 *   npm run fuzz -- [--cases 100000] [--start 0] [--time-ms 5000] [--heap-mb 512] [--rss-mb 1536]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { FuzzCase } from './cases.ts';

const { values } = parseArgs({
  options: {
    cases: { type: 'string', default: '100000' },
    start: { type: 'string', default: '0' },
    'time-ms': { type: 'string', default: '5000' },
    'heap-mb': { type: 'string', default: '512' },
    'rss-mb': { type: 'string', default: '1536' },
  },
});
const total = Number(values.cases);
const start = Number(values.start);
const timeMs = Number(values['time-ms']);
const heapMb = Number(values['heap-mb']);
/** The heap limit does not count Buffers: the process's resident size bounds them. */
const rssMb = Number(values['rss-mb']);
const here = path.dirname(fileURLToPath(import.meta.url));
const regressions = path.join(here, 'regressions.json');

interface Failure { caseNo: number; kind: 'crash' | 'hang' | 'blow-up'; detail: string; case?: FuzzCase }

function startWorker(from: number, to: number): Worker {
  const tsx = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./worker.ts', import.meta.url).href;
  return new Worker(`import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(entry)}); })`, {
    eval: true, workerData: { from, to }, resourceLimits: { maxOldGenerationSizeMb: heapMb },
  });
}

const failures: Failure[] = [];
const started = Date.now();
let accepted = 0;
let refused = 0;
let next = start;
const end = start + total;
let maxCaseMs = 0;
let maxRssMb = 0;

/** Runs cases [from, end) on one worker; resolves when the worker ends (done, crashed, or killed). */
function runFrom(from: number): Promise<number> {
  return new Promise((resolve) => {
    const w = startWorker(from, end);
    let current: { caseNo: number; case: FuzzCase; at: number } | null = null;
    let resumeAt = from;
    let settled = false;
    const finish = (n: number) => {
      if (settled) return;
      settled = true;
      clearInterval(watchdog);
      resolve(n);
    };
    const watchdog = setInterval(() => {
      const rss = process.memoryUsage().rss / 2 ** 20;
      maxRssMb = Math.max(maxRssMb, rss);
      const hang = current && Date.now() - current.at > timeMs;
      if (current && (hang || rss > rssMb)) {
        failures.push({
          caseNo: current.caseNo, kind: hang ? 'hang' : 'blow-up', case: current.case,
          detail: hang ? `no result after ${timeMs} ms` : `resident size ${rss.toFixed(0)} MiB`,
        });
        const n = current.caseNo + 1;
        current = null;
        void w.terminate().then(() => finish(n));
      }
    }, 100);
    w.on('message', (m: { start?: number; case?: FuzzCase; done?: number; outcome?: string; ms?: number; crash?: string }) => {
      if (m.start !== undefined) current = { caseNo: m.start, case: m.case!, at: Date.now() };
      if (m.done !== undefined) {
        if (m.crash) failures.push({ caseNo: m.done, kind: 'crash', detail: m.crash, case: current?.case });
        else if (m.outcome === 'accepted') accepted++;
        else refused++;
        maxCaseMs = Math.max(maxCaseMs, m.ms ?? 0);
        resumeAt = m.done + 1;
        current = null;
        if ((m.done + 1) % 5000 === 0) {
          process.stderr.write(`fuzz: ${m.done + 1 - start}/${total} cases, ${failures.length} failures, ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
        }
      }
    });
    w.on('error', (e) => {
      const kind = /ERR_WORKER_OUT_OF_MEMORY|heap/i.test(`${(e as NodeJS.ErrnoException).code} ${e.message}`) ? 'blow-up' : 'crash';
      if (current) failures.push({ caseNo: current.caseNo, kind, detail: e.message, case: current.case });
      finish(current ? current.caseNo + 1 : resumeAt);
    });
    w.on('exit', () => finish(resumeAt));
  });
}

while (next < end) next = Math.max(next + 0, await runFrom(next));

const seconds = (Date.now() - started) / 1000;
process.stdout.write(`fuzz: ${total} cases (from ${start}) in ${seconds.toFixed(1)} s on ${os.cpus().length} cores: `
  + `${accepted} accepted, ${refused} refused with a NydusError, ${failures.length} failures; slowest case ${maxCaseMs} ms, `
  + `largest resident size ${maxRssMb.toFixed(0)} MiB (bound ${rssMb}), heap limit ${heapMb} MiB, time bound ${timeMs} ms\n`);
if (failures.length) {
  const kept: FuzzCase[] = fs.existsSync(regressions) ? JSON.parse(fs.readFileSync(regressions, 'utf8')) : [];
  for (const f of failures) {
    process.stdout.write(`  case ${f.caseNo}: ${f.kind}: ${f.detail.split('\n').slice(0, 4).join(' | ')}\n`);
    if (f.case) kept.push({ ...f.case, note: `fuzz case ${f.caseNo}: ${f.kind}` });
  }
  fs.writeFileSync(regressions, JSON.stringify(kept, null, 1) + '\n');
  process.stdout.write(`kept the failing cases in ${regressions}\n`);
  process.exitCode = 1;
}
