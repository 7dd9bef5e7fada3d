/**
 * src/cli/stack-maps.ts: a bundle run by plain node (as bin/run.sh runs the commands, without
 * --enable-source-maps) formats its stack traces with the TypeScript sources' lines. The oracle is
 * the source written here: the line of the `throw` in it.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { build } from 'esbuild';
import { repoRoot } from './helpers/cli.ts';
import { tmpDir } from './helpers/fixtures.ts';

const dir = tmpDir('stack-maps-');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test("a bundle names its TypeScript sources in stack traces, node's error codes kept, node's own mapping the reference", async () => {
  const src = path.join(dir, 'entry.ts');
  fs.writeFileSync(src, [
    `import '${path.join(repoRoot, 'src/cli/stack-maps.ts')}';`,
    'import fs from "node:fs";',
    'function inner(n: number): never {',
    '  throw new Error(`thrown ${n}`);',
    '}',
    'try { inner(1); } catch (e) { console.log((e as Error).stack); }',
    'try { fs.readFileSync(42 as unknown as string, { encoding: "nope" as BufferEncoding }); } catch (e) { console.log((e as Error).stack); }',
    '',
  ].join('\n'));
  const out = path.join(dir, 'entry.mjs');
  await build({ entryPoints: [src], outfile: out, bundle: true, platform: 'node', format: 'esm', sourcemap: true, sourcesContent: false, logLevel: 'warning' });
  const r = spawnSync(process.execPath, [out], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.split('\n');
  assert.equal(lines[0], 'Error: thrown 1');
  assert.equal(lines[1], `    at inner (${src}:4:9)`);
  assert.match(lines[2], new RegExp(`^    at ${src.replace(/[.]/g, '\\.')}:6:7$`));
  assert.match(r.stdout, /^TypeError \[ERR_INVALID_ARG_VALUE\]: /m, 'node\'s errors keep their code in the first line');
  assert.match(r.stdout, new RegExp(`at .*${src.replace(/[.]/g, '\\.')}:7:\\d+`));
  // With --enable-source-maps node maps the frames itself: the same lines.
  const native = spawnSync(process.execPath, ['--enable-source-maps', out], { encoding: 'utf8' });
  assert.equal(native.stdout.split('\n')[1], lines[1]);
});
