/**
 * The kernel-test suite (kernel-test/run.sh): boots the guest (Debian 6.12 with cachefiles/erofs
 * on-demand modules) once per scenario: the smoke check and the on-demand scenarios of nydusd
 * (kernel-test/guest/ondemand.test.ts). Needs root and qemu; kernel-test/setup.sh installs and caches
 * the rest.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { repoRoot } from './helpers/cli.ts';

test('root-kernel: kernel-test scenarios in the guest kernel (smoke, fscache on-demand with nydusd, snapshotter lifecycle, lazy pull from a registry)', { timeout: 2_400_000 }, () => {
  const r = spawnSync('bash', [path.join(repoRoot, 'kernel-test/run.sh')], { encoding: 'utf8', maxBuffer: 1 << 28, timeout: 2_400_000 });
  process.stdout.write(r.stdout.split('\n').map((l) => `# ${l}`).join('\n') + '\n');
  assert.equal(r.status, 0, `kernel-test failed:\n${r.stdout.slice(-6000)}\n${r.stderr.slice(-2000)}`);
  assert.match(r.stdout, /kernel-test: \d+ passed, 0 failed/);
  assert.match(r.stdout, /ok   10-ondemand\.sh/);
  assert.match(r.stdout, /ok   20-snapshotter\.sh/);
  assert.match(r.stdout, /ok   30-lazy-pull\.sh/);
});
