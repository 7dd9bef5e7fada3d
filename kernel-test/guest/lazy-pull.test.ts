/**
 * Lazy pull in the guest kernel: a converted Debian rootfs in a registry inside the guest (Debian's
 * docker-registry, read-only storage made on the host by kernel-test/plan-lazy.ts), nydusd's registry
 * backend fetching chunks through a counting proxy, `mount -t erofs -o fsid=...`. Every read of the
 * mounts runs in a child process: the proxy lives in this process and must keep answering.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { LazyEnv, type NydusImage } from './lazy-env.ts';

const exec = promisify(execFile);
const env = new LazyEnv();
let img: NydusImage;

interface Entry { mode: string; uid: string; gid: string; sha256?: string; size?: string; target?: string }

function readManifest(file: string): Map<string, Entry> {
  const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, string>;
  // Keys are hex path components: back to plain paths ('' is the root).
  return new Map(Object.entries(raw).map(([k, v]) => [k.split('/').map((h) => Buffer.from(h, 'hex').toString('latin1')).join('/'), JSON.parse(v) as Entry]));
}

const rootfs = readManifest(env.plan.manifest);

const FIND_TYPE: Record<number, string> = { 0o10: 'f', 0o4: 'd', 0o12: 'l', 0o2: 'c', 0o6: 'b', 0o1: 'p', 0o14: 's' };

/** Type, permissions, owner and link target of every entry as `find` sees it, keyed like the manifest. */
function expectedListing(m: Map<string, Entry>): string[] {
  return [...m].map(([p, e]) => {
    const mode = parseInt(e.mode, 8);
    const target = e.target ? Buffer.from(e.target, 'hex').toString('latin1') : '';
    return `${FIND_TYPE[mode >> 12]} ${(mode & 0o7777).toString(8)} ${e.uid} ${e.gid} ${target} ${p}`;
  }).sort();
}

async function listing(dir: string): Promise<string[]> {
  const { stdout } = await exec('find', ['.', '-printf', '%y\\0%m\\0%U\\0%G\\0%l\\0%P\\0'], { cwd: dir, maxBuffer: 1 << 28, encoding: 'latin1' });
  const f = stdout.split('\0');
  const out: string[] = [];
  for (let i = 0; i + 6 <= f.length; i += 6) out.push(`${f[i]} ${f[i + 1]} ${f[i + 2]} ${f[i + 3]} ${f[i + 4]} ${f[i + 5] ? `/${f[i + 5]}` : ''}`);
  return out.sort();
}

/** sha256 of every regular file under `dir` by coreutils, keyed like the manifest. */
async function sha256All(dir: string): Promise<Map<string, string>> {
  const { stdout } = await exec('sh', ['-c', 'find . -type f -print0 | xargs -0 -r sha256sum'], { cwd: dir, maxBuffer: 1 << 28, encoding: 'latin1' });
  return new Map(stdout.split('\n').filter(Boolean).map((l) => [l.slice(66).replace(/^\.\//, '/'), l.slice(0, 64)]));
}

function shaDiffs(want: Map<string, Entry>, got: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [p, e] of want) if (e.sha256 && got.get(p) !== e.sha256) out.push(`${p}: ${got.get(p) ?? 'not read'} != ${e.sha256}`);
  return out;
}

const bySize = [...rootfs].filter(([, e]) => e.sha256).sort(([, a], [, b]) => Number(b.size) - Number(a.size));
/** The largest regular file of the rootfs (apt's package list, tens of chunks): a long read. */
const bigFile = bySize[0];
/** A file of a few chunks (perl). */
const midFile = bySize.find(([, e]) => Number(e.size) < 8 << 20)!;

async function sha256Of(file: string): Promise<string> {
  const { stdout } = await exec('sha256sum', [file]);
  return stdout.slice(0, 64);
}

async function eioOf(cmd: string, args: string[]): Promise<string> {
  const r = await exec(cmd, args).then(() => null, (e: { stderr?: string; code?: number }) => e);
  assert.ok(r, `${cmd} ${args.join(' ')} succeeded; an I/O error was expected`);
  return String(r.stderr);
}


async function timed<T>(what: string, work: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  try {
    return await work();
  } finally {
    console.log(`# ${what}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
}

before(async () => {
  await timed('registry and proxy up', () => env.startRegistry());
  await timed('nydusd up', () => env.startDaemon());
  img = await timed('manifest and bootstrap pulled', () => env.pullNydusImage());
});

after(async () => {
  assert.equal(await env.close(), 0, 'nydusd exits cleanly on SIGTERM');
});

test('1: chroot /mnt /bin/ls / runs from the registry having fetched <= 5% of the blob bytes', async () => {
  await env.registerRegistryImage('debian', img);
  const dir = env.mount('debian');
  const before = env.blobBytesFetched(img);
  const { stdout } = await timed('first ls', () => exec('chroot', [dir, '/bin/ls', '/']));
  for (const name of ['bin', 'etc', 'usr', 'var']) assert.ok(stdout.split('\n').includes(name), `ls / lists ${name}: ${stdout}`);
  const fetched = env.blobBytesFetched(img) - before;
  const ratio = fetched / env.plan.blobBytes;
  console.log(`# ls fetched ${fetched} of ${env.plan.blobBytes} blob bytes (${(ratio * 100).toFixed(2)}%)`);
  assert.ok(fetched > 0, 'the blob data came through the proxy');
  assert.ok(ratio <= 0.05, `fetched ${(ratio * 100).toFixed(2)}% of the blob bytes to run ls (target <= 5%)`);
});

test('2: after a full read the mount is the source rootfs: every file\'s sha256, type, mode, owner, link target', async () => {
  // The whole blob pulled by nydusd's prefetch (chunks stored back to back in one request of up to
  // batch_size), then every file read through the kernel: one request per chunk would take minutes under TCG.
  await env.registerRegistryImage('debian-full', img, { enable: true, prefetch_all: true, threads: 4, batch_size: 4 << 20 });
  const dir = env.mount('debian-full');
  const before = env.blobBytesFetched(img);
  await timed('prefetch of the whole blob', async () => {
    for (const [blobId, chunks] of Object.entries(env.plan.blobChunks)) {
      let have = 0;
      // Polled slowly: the daemon answers with every chunk index, work taken from the prefetch under TCG.
      for (let i = 0; i < 450 && (have = await env.cachedChunks('debian-full', blobId)) < chunks; i++) await new Promise((r) => setTimeout(r, 2000));
      assert.equal(have, chunks, `prefetch filled the cache file of blob ${blobId}`);
    }
  });
  const fetched = env.blobBytesFetched(img) - before;
  assert.ok(fetched <= env.plan.blobBytes, `prefetch fetched each chunk once (${fetched} of ${env.plan.blobBytes} bytes)`);
  const got = await timed('full read (sha256sum of every file)', () => sha256All(dir));
  assert.deepEqual(shaDiffs(rootfs, got).slice(0, 10), []);
  const [want, seen] = [expectedListing(rootfs), await listing(dir)];
  const missing = want.filter((l) => !seen.includes(l));
  const extra = seen.filter((l) => !want.includes(l));
  assert.deepEqual({ missing: missing.slice(0, 10), extra: extra.slice(0, 10) }, { missing: [], extra: [] }, 'find lists every entry as the source has it');
});

test('3: registry stopped mid-read: the reader gets EIO, the daemon serves another image, a restarted registry serves the same read', async () => {
  await env.registerRegistryImage('debian-down', img);
  const dir = env.mount('debian-down');
  const file = path.join(dir, bigFile[0]);
  // Reads one MiB, waits for a line on stdin, then reads the rest.
  const reader = spawn(process.execPath, ['-e', `const fs = require('fs'), fd = fs.openSync(process.argv[1], 'r'), buf = Buffer.alloc(1 << 20);
    fs.readSync(fd, buf, 0, buf.length, 0); console.log('first');
    process.stdin.once('data', () => { try { let off = buf.length, n; while ((n = fs.readSync(fd, buf, 0, buf.length, off)) > 0) off += n; console.log('done'); }
      catch (e) { console.log(e.code); process.exit(3); } });`, file], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  reader.stdout!.on('data', (d) => (out += d));
  for (let i = 0; i < 600 && !out.includes('first'); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(out.includes('first'), `the reader read its first MiB: ${out}`);
  await env.stopRegistry();
  reader.stdin!.end('go\n');
  const code = await new Promise((r) => reader.once('exit', r));
  assert.equal(code, 3, `the reader failed: ${out}`);
  assert.match(out, /EIO/);

  await env.registerLocalImage('local', env.plan.local.boot, env.plan.local.blobDir);
  const local = readManifest(env.plan.local.manifest);
  assert.deepEqual(shaDiffs(local, await sha256All(env.mount('local'))), [], 'another image is served while the registry is down');

  await env.restartRegistry();
  assert.equal(await sha256Of(file), bigFile[1].sha256, 'the same read succeeds once the registry is back');
});

test('4: chunks served with wrong bytes are an EIO, and are not kept: the next read is right', async () => {
  await env.registerRegistryImage('debian-corrupt', img);
  const dir = env.mount('debian-corrupt');
  const file = path.join(dir, midFile[0]);
  const blobs = new RegExp(`/blobs/(${img.blobDigests.join('|')})$`);
  // Every blob response corrupted while the file is read (nydusd's read-ahead may ask for other chunks first).
  env.proxy.inject({ match: (r) => r.method === 'GET' && blobs.test(r.url!), fault: { kind: 'corrupt-body' }, times: Infinity });
  const stderr = await eioOf('sha256sum', [file]);
  env.proxy.clearFaults();
  assert.match(stderr, /Input\/output error/);
  assert.ok(env.proxy.seen.some((s) => s.fault === 'corrupt-body'), 'chunks were served corrupted');
  assert.equal(await sha256Of(file), midFile[1].sha256);
});
