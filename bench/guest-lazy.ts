/**
 * Guest side of bench/lazy.ts: time to the first `chroot <rootfs> /bin/ls /` output and the bytes
 * fetched from the in-guest registry, (a) nydusd lazy over fscache, (b) the OCI image pulled with
 * `skopeo copy` and unpacked with `umoci unpack` first. Prints BENCH lines.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { LazyEnv } from '../kernel-test/guest/lazy-env.ts';

/** Runs a command; resolves with the seconds from `t0` to its first stdout byte once it exits 0. */
function firstOutput(t0: bigint, cmd: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let first = 0;
    child.stdout!.on('data', () => { if (!first) first = Number(process.hrtime.bigint() - t0) / 1e9; });
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 && first ? resolve(first) : reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}`))));
  });
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}`))));
  });
}

const env = new LazyEnv();
await env.startRegistry();
await env.startDaemon();
console.log('# registry, proxy and nydusd up');
try {
  // (a) Lazy: what the snapshotter does (manifest, bootstrap layer, register, mount), then ls.
  let bytes0 = env.proxy.bytesFetched();
  let t0 = process.hrtime.bigint();
  const img = await env.pullNydusImage();
  await env.registerRegistryImage('bench', img);
  const lazyDir = env.mount('bench');
  const lazy = await firstOutput(t0, 'chroot', [lazyDir, '/bin/ls', '/']);
  const lazyBytes = env.proxy.bytesFetched() - bytes0;
  console.log(`# lazy: ${lazy.toFixed(2)} s`);

  // (b) Pull the whole OCI image, unpack it, then ls.
  const layout = path.join(env.scratch, 'oci');
  const bundle = path.join(env.scratch, 'bundle');
  bytes0 = env.proxy.bytesFetched();
  t0 = process.hrtime.bigint();
  await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${env.ref(env.plan.sourceTag)}`, `oci:${layout}:${env.plan.sourceTag}`]);
  await run('umoci', ['unpack', '--image', `${layout}:${env.plan.sourceTag}`, bundle]);
  const full = await firstOutput(t0, 'chroot', [path.join(bundle, 'rootfs'), '/bin/ls', '/']);
  const fullBytes = env.proxy.bytesFetched() - bytes0;
  fs.rmSync(bundle, { recursive: true, force: true });
  fs.rmSync(layout, { recursive: true, force: true });
  console.log(`BENCH lazy ${lazy} ${lazyBytes}\nBENCH full ${full} ${fullBytes}\nBENCH blobs 0 ${env.plan.blobBytes}`);
} finally {
  await env.close();
}
