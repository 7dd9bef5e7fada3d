// Bundles each CLI (src/cli/<name>.ts) into dist/<name>.mjs with esbuild, so the commands start as
// plain Node programs (no TypeScript loader at run time). npm packages stay external.
import { build } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const names = ['nydus-image', 'nydusd', 'nydusify', 'nydusctl'];
fs.rmSync(path.join(root, 'dist'), { recursive: true, force: true });
await build({
  // The verify pool's worker is loaded by URL next to the nydusd bundle.
  entryPoints: {
    ...Object.fromEntries(names.map((n) => [n, path.join(root, 'src/cli', `${n}.ts`)])),
    'verify-worker': path.join(root, 'src/daemon/verify-worker.ts'),
  },
  outdir: path.join(root, 'dist'),
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  packages: 'external',
  sourcemap: true,
  logLevel: 'warning',
});
fs.writeFileSync(path.join(root, 'dist/.built'), '');
