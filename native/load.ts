/**
 * The one loader of the project's native addons (build/Release/<name>.node, built by node-gyp from
 * binding.gyp). It looks upwards from this module for the build directory, so it works both from the
 * TypeScript sources and from the bundles in dist/.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);

export function loadAddon<T>(name: string): T {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const file = path.join(dir, 'build', 'Release', `${name}.node`);
    if (fs.existsSync(file)) return require(file) as T;
    dir = path.dirname(dir);
  }
  throw new Error(`native addon ${name}.node is not built (run scripts/setup.sh or \`npm run build:native\`)`);
}
