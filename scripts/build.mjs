// Run with tsx (it imports the TypeScript source of the build identity).
// Bundles each CLI (src/cli/<name>.ts) into dist/<name>.mjs with esbuild, so the commands start as
// plain Node programs (no TypeScript loader at run time).
import { build } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { computeSourceId } from '../src/version.ts';
import { planSourceId } from './plan-id.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const names = ['nydus-image', 'nydusd', 'nydusify', 'nydusctl', 'nydus-backend-proxy'];
fs.rmSync(path.join(root, 'dist'), { recursive: true, force: true });
await build({
  // The registration pool's worker is loaded by URL next to the nydusd bundle.
  entryPoints: {
    ...Object.fromEntries(names.map((n) => [n, path.join(root, 'src/cli', `${n}.ts`)])),
    'register-worker': path.join(root, 'src/daemon/register-worker.ts'),
  },
  outdir: path.join(root, 'dist'),
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // What a command imports dynamically is a file of its own (code the entries share too), loaded when
  // imported: nydusd's supervisor starts its worker without compiling the daemon, nor yargs loaded
  // for a plain argument list. Chunks lie next to the entries (workers are found by URL beside them).
  splitting: true,
  // npm packages stay external, but yargs, pino and better-sqlite3's JavaScript: as dozens of small
  // modules each they cost a command's start more to find, read and compile one by one (pino 30 ms
  // of nydusd's, better-sqlite3 15 ms) than bundled. better-sqlite3's addon stays where npm built it
  // (src/daemon/state.ts names it).
  external: Object.keys(JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).dependencies)
    .filter((d) => !['yargs', 'pino', 'better-sqlite3'].includes(d)).flatMap((d) => [d, `${d}/*`]),
  // The bundled CommonJS modules require node's own modules: an ES module has no `require` of its own.
  banner: { js: "import { createRequire as __bundleRequire } from 'node:module';\nconst require = __bundleRequire(import.meta.url);" },
  // Mappings only: stack traces need no more (src/cli/stack-maps.ts), and the sources' text would
  // triple the map.
  sourcemap: true,
  sourcesContent: false,
  // The build's identity (`nydusd --version`, GET /api/v1/daemon) baked in, so bundles need no sources.
  // ...and the identity of the code that makes registration plans, which kept plans are filed under.
  define: { __NYDUS_TS_SOURCE_ID__: JSON.stringify(computeSourceId(root)), __NYDUS_TS_PLAN_SOURCE_ID__: JSON.stringify(await planSourceId(root)) },
  logLevel: 'warning',
});
fs.writeFileSync(path.join(root, 'dist/.built'), '');
