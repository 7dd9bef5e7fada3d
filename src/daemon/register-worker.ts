/** Worker thread of RegistrationPool: plans one image registration per message. */
import '../cli/stack-maps.ts';
import { parentPort } from 'node:worker_threads';
import { type RegistrationRequest, planBuffers, planRegistration } from './registration.ts';
import type { NydusError } from '../../erofs/errors.ts';

parentPort!.on('message', (req: RegistrationRequest) => {
  try {
    const plan = planRegistration(req);
    parentPort!.postMessage({ plan }, planBuffers(plan));
  } catch (e) {
    const err = e as NydusError;
    parentPort!.postMessage({ error: { name: err.name, message: err.message, errno: err.errno } });
  }
});
