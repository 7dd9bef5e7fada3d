/**
 * A Debian bookworm minbase rootfs (about 6,800 entries, mostly small files): the real-world tree that
 * benchmarks, conversion tests and the kernel tests use. Made once with debootstrap from the mirror apt
 * uses, cached in `.cache/debian-rootfs/` at the checkout root (about 200 MiB, under a minute to make).
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { repoRoot } from './cli.ts';

export const debianRootfsDir = path.join(repoRoot, '.cache/debian-rootfs');
const COMPLETE = '.complete';

/** Installs a Debian package when its command is missing (the benchmarks and CI run as root). */
export function ensureTool(cmd: string, debianPackage: string): void {
  if (spawnSync('sh', ['-c', `command -v "${cmd}"`]).status === 0) return;
  const r = spawnSync('apt-get', ['install', '-y', '-qq', debianPackage], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  if (r.status !== 0) throw new Error(`${cmd} not found and apt-get install ${debianPackage} failed: install the Debian package ${debianPackage}`);
}

function aptMirror(): string {
  for (const f of ['/etc/apt/sources.list.d/debian.sources', '/etc/apt/sources.list']) {
    if (!fs.existsSync(f)) continue;
    const text = fs.readFileSync(f, 'utf8');
    const m = text.match(/^(?:URIs:\s*|deb\s+)(\S+\/debian)\/?\s*$/m) ?? text.match(/(?:URIs:\s*|deb\s+)(\S+\/debian)\b/);
    if (m) return m[1];
  }
  throw new Error('no Debian mirror found in the apt sources (/etc/apt/sources.list.d/debian.sources)');
}

const lockDir = `${debianRootfsDir}.lock`;
const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * Runs `make` unless `done` exists, one process at a time: the test suite makes the fixtures beside
 * the tests that use them, and a test that comes first waits for the maker rather than starting
 * over. A lock whose holder is gone (its pid no longer runs) is taken over.
 */
function once(done: string, make: () => void): void {
  for (;;) {
    if (fs.existsSync(done)) return;
    try {
      fs.mkdirSync(path.dirname(lockDir), { recursive: true });
      fs.mkdirSync(lockDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (lockAbandoned()) fs.rmSync(lockDir, { recursive: true, force: true });
      else sleep(500);
      continue;
    }
    try {
      fs.writeFileSync(path.join(lockDir, 'pid'), String(process.pid));
      if (!fs.existsSync(done)) make();
    } finally {
      fs.rmSync(lockDir, { recursive: true, force: true });
    }
  }
}

/** Whether the lock's holder is gone: its pid runs no more, or it never wrote one (10 s on). */
function lockAbandoned(): boolean {
  try {
    const pid = Number(fs.readFileSync(path.join(lockDir, 'pid'), 'utf8'));
    if (!pid) throw new Error('no pid yet');
    return !fs.existsSync(`/proc/${pid}`);
  } catch {
    try {
      return Date.now() - fs.statSync(lockDir).mtimeMs > 10_000;
    } catch {
      return false; // released meanwhile
    }
  }
}

/**
 * The rootfs directory, made on first use. The marker file is written last and is not part of the
 * tree: a debootstrap that died half way is made again, and `entries` never counts the marker.
 */
export function debianRootfs(): string {
  const root = path.join(debianRootfsDir, 'rootfs');
  once(path.join(debianRootfsDir, COMPLETE), () => makeRootfs(root));
  return root;
}

function makeRootfs(root: string): void {
  ensureTool('debootstrap', 'debootstrap');
  fs.rmSync(debianRootfsDir, { recursive: true, force: true });
  fs.mkdirSync(debianRootfsDir, { recursive: true });
  process.stderr.write(`making a Debian bookworm minbase rootfs in ${root} (once)\n`);
  execFileSync('debootstrap', ['--variant=minbase', 'bookworm', root, aptMirror()], { stdio: ['ignore', 'ignore', 'inherit'] });
  // Caches apt leaves behind are not part of an image anyone ships.
  fs.rmSync(path.join(root, 'var/cache/apt/archives'), { recursive: true, force: true });
  fs.mkdirSync(path.join(root, 'var/cache/apt/archives/partial'), { recursive: true });
  fs.writeFileSync(path.join(debianRootfsDir, COMPLETE), '');
}

/**
 * The rootfs as a one-layer OCI image layout made by umoci (as Debian's own images are one layer),
 * made once beside the rootfs. Returns the layout and its tag (`bookworm`).
 */
export function debianOciImage(): { layout: string; tag: string } {
  const rootfs = debianRootfs();
  const layout = path.join(debianRootfsDir, 'oci');
  const tag = 'bookworm';
  const done = path.join(debianRootfsDir, '.oci-complete');
  once(done, () => {
    ensureTool('umoci', 'umoci');
    fs.rmSync(layout, { recursive: true, force: true });
    const run = (...args: string[]) => execFileSync('umoci', args, { stdio: ['ignore', 'ignore', 'inherit'] });
    run('init', '--layout', layout);
    run('new', '--image', `${layout}:${tag}`);
    run('insert', '--image', `${layout}:${tag}`, rootfs, '/');
    fs.writeFileSync(done, '');
  });
  return { layout, tag };
}
