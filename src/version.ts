/**
 * The build's identity, as nydus reports it (`nydusd --version`, `version` in GET /api/v1/daemon).
 * nydus-snapshotter compares the "Git Commit" line of `nydusd --version` with the running daemon's
 * `version.git_commit` to decide whether a daemon runs the installed binary, so both come from here.
 * The commit is a digest of the sources (no git needed): the bundles get it baked in by
 * scripts/build.mjs, runs from the TypeScript sources compute it from the same files.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const PACKAGE_VERSION = '0.1.0';

declare const __NYDUS_TS_SOURCE_ID__: string | undefined;

/** A digest of every source file of the project (TypeScript, native code, the package manifest). */
export function computeSourceId(root: string): string {
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.(ts|mts|cc|h)$/.test(e.name)) files.push(p);
    }
  };
  for (const d of ['src', 'erofs', 'native']) walk(path.join(root, d));
  files.push(path.join(root, 'package.json'));
  const h = crypto.createHash('sha256');
  for (const f of files) h.update(path.relative(root, f)).update('\0').update(fs.readFileSync(f)).update('\0');
  return h.digest('hex').slice(0, 12);
}

function sourceId(): string {
  if (typeof __NYDUS_TS_SOURCE_ID__ === 'string') return __NYDUS_TS_SOURCE_ID__;
  return computeSourceId(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..'));
}

/** nydus's BuildTimeInfo (its version "v"-prefixed, as nydus's git tags: acceleration-service reads `Version:\s*(v.*)` from `nydus-image --version`). */
export const BUILD_INFO = {
  package_ver: `v${PACKAGE_VERSION}`, git_commit: sourceId(), build_time: '', profile: 'release', rustc: 'nydus-ts (node)',
};

/** `--version` text in nydus's shape (the snapshotter reads the "Git Commit:" line). */
export function versionText(): string {
  return `Version: \t${BUILD_INFO.package_ver}\nGit Commit: \t${BUILD_INFO.git_commit}\nBuild Time: \t${BUILD_INFO.build_time}\nProfile: \t${BUILD_INFO.profile}\nRustc: \t${BUILD_INFO.rustc}\n`;
}
