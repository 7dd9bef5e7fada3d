/** Bad input to `nydus-image create`: one clear line naming the file, exit status 1, nothing left behind. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { tmpDir } from './helpers/fixtures.ts';
import { repoRoot, runCli } from './helpers/cli.ts';

const work = tmpDir('create-errors');
fs.chmodSync(work, 0o777);
after(() => fs.rmSync(work, { recursive: true, force: true }));

function assertCleanFailure(r: { status: number | null; stderr: string }, pattern: RegExp): void {
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at |internal error/, 'no stack trace, no internal error');
}

test('a missing source, a file as source, bad flags', () => {
  const boot = path.join(work, 'x.boot');
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, path.join(work, 'missing')]), /source directory .*missing: does not exist/);
  fs.writeFileSync(path.join(work, 'file'), 'x');
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, path.join(work, 'file')]), /is not a directory/);
  fs.mkdirSync(path.join(work, 'src'));
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, '--chunk-size', '0x1234', path.join(work, 'src')]), /invalid chunk size/);
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, '--compressor', 'lz4_block', path.join(work, 'src')]), /unsupported compressor "lz4_block"/);
  assertCleanFailure(runCli('nydus-image', ['create', '-B', boot, '-D', work, '--fs-version', '5', path.join(work, 'src')]), /unsupported fs version "5"/);
  assert.ok(!fs.existsSync(boot));
});

test('an unreadable file in the source (run as nobody) names the file and leaves no blob behind', () => {
  const src = path.join(work, 'locked');
  fs.mkdirSync(src);
  fs.chmodSync(src, 0o755);
  fs.writeFileSync(path.join(src, 'ok'), 'fine');
  fs.writeFileSync(path.join(src, 'secret'), 'no');
  fs.chmodSync(path.join(src, 'secret'), 0o600);
  const out = path.join(work, 'out');
  fs.mkdirSync(out, { mode: 0o777 });
  fs.chmodSync(out, 0o777);
  const r = spawnSync('runuser', ['-u', 'nobody', '--', path.join(repoRoot, 'bin/nydus-image'), 'create', '-B', path.join(out, 'b.boot'), '-D', out, src], { encoding: 'utf8' });
  assertCleanFailure({ status: r.status, stderr: r.stderr }, /cannot read .*locked\/secret: EACCES/);
  assert.deepEqual(fs.readdirSync(out), [], 'no partial blob or bootstrap');
});
