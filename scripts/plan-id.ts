// The identity of the code that makes registration plans: a digest of src/daemon/registration.ts and
// every source file it imports (found by esbuild, as the bundle finds them), npm packages aside. The
// daemon keeps plans under it (src/daemon/plan-cache.ts): a new build whose planner and validation
// are the same code keeps using the plans the last one made (a hot upgrade registers every image
// again), and one that changed any of that code makes them anew.
// What it cannot see: code loaded at run time (the native addon, through createRequire), npm packages
// and build options. Planning uses none of them today; a change that makes them shape plans must bump
// PLAN_FORMAT, which the digest covers.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { build } from 'esbuild';

/** Bumped by hand when plans change for a reason the sources below do not show. */
const PLAN_FORMAT = 1;

export async function planSourceId(root: string): Promise<string> {
  const r = await build({
    absWorkingDir: root, entryPoints: ['src/daemon/registration.ts'], bundle: true, platform: 'node', format: 'esm',
    packages: 'external', write: false, metafile: true, logLevel: 'silent',
  });
  const h = crypto.createHash('sha256').update(`plan-format ${PLAN_FORMAT}\0`);
  for (const f of Object.keys(r.metafile.inputs).sort()) h.update(f).update('\0').update(fs.readFileSync(path.join(root, f))).update('\0');
  return h.digest('hex').slice(0, 12);
}
