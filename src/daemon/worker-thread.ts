/**
 * Starting one of the daemon's worker threads: `<name>.mjs` next to this module in the bundles
 * (scripts/build.mjs builds each worker as its own entry); from the TypeScript sources the worker
 * registers tsx itself (loader hooks of the main thread do not reach workers in Node 20).
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

export type WorkerName = 'register-worker';

export function startWorker(name: WorkerName, opts: WorkerOptions = {}): Worker {
  const self = import.meta.url;
  if (!self.endsWith('.ts')) return new Worker(new URL(`./${name}.mjs`, self), opts);
  const tsx = import.meta.resolve('tsx/esm/api');
  const entry = new URL(`./${name}.ts`, self).href;
  return new Worker(`import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(entry)}); })`, { ...opts, eval: true });
}
