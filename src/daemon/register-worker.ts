/** Worker thread of RegistrationPool: plans one image registration, or maps one access trace to files, per message. */
import '../cli/stack-maps.ts';
import { parentPort } from 'node:worker_threads';
import { planBuffers, planRegistration } from './registration.ts';
import { resolveTraceFiles } from './trace-files.ts';
import type { RegistrationJob } from './registration-pool.ts';
import type { NydusError } from '../../erofs/errors.ts';

parentPort!.on('message', (job: RegistrationJob) => {
  try {
    if (job.kind === 'plan') {
      const plan = planRegistration(job.req);
      parentPort!.postMessage({ result: plan }, planBuffers(plan));
    } else {
      const files = resolveTraceFiles(job.req);
      parentPort!.postMessage({ result: files }, [files.owner.buffer as ArrayBuffer]);
    }
  } catch (e) {
    const err = e as NydusError;
    parentPort!.postMessage({ error: { name: err.name, message: err.message, errno: err.errno } });
  }
});
