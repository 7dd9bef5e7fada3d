/** Worker thread of VerifyPool: verifies one chunk per message. */
import { parentPort } from 'node:worker_threads';
import { verifyChunk } from '../blob/verify.ts';
import type { NydusError } from '../../erofs/errors.ts';

parentPort!.on('message', (m) => {
  try {
    const data = verifyChunk({ ...m, stored: Buffer.from(m.stored.buffer, m.stored.byteOffset, m.stored.byteLength), digest: Buffer.from(m.digest) });
    const out = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength ? data : Buffer.from(data);
    parentPort!.postMessage({ data: out }, [out.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort!.postMessage({ error: (e as Error).message, errno: (e as NydusError).errno });
  }
});
