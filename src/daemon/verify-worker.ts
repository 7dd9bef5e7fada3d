/** Worker thread of VerifyPool: verifies one run of chunks per message. */
import { parentPort } from 'node:worker_threads';
import { type StoredRun, verifyRun } from '../blob/verify.ts';
import type { NydusError } from '../../erofs/errors.ts';

parentPort!.on('message', (m: StoredRun) => {
  try {
    const r = verifyRun(m);
    parentPort!.postMessage(r, [r.data.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort!.postMessage({ error: (e as Error).message, errno: (e as NydusError).errno });
  }
});
