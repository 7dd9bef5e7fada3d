/** The fuzzer's worker thread: builds the seeds, then runs cases [from, to), reporting each one. */
import fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { tmpDir } from '../helpers/fixtures.ts';
import { ForeignError, buildSeeds, caseRunner, makeCase } from './cases.ts';

const { from, to } = workerData as { from: number; to: number };
const work = tmpDir('fuzz');
const seeds = buildSeeds(work);
const runner = caseRunner(work, seeds);
try {
  for (let i = from; i < to; i++) {
    const c = makeCase(seeds, i);
    parentPort!.postMessage({ start: i, case: c });
    const t0 = Date.now();
    try {
      const outcome = await runner.run(c);
      parentPort!.postMessage({ done: i, outcome, ms: Date.now() - t0 });
    } catch (e) {
      parentPort!.postMessage({ done: i, crash: e instanceof ForeignError ? e.message : (e as Error)?.stack ?? String(e), ms: Date.now() - t0 });
    }
  }
} finally {
  runner.close();
  fs.rmSync(work, { recursive: true, force: true });
}
