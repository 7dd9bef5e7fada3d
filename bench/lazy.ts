/**
 * Benchmark of lazy pulling, in one kernel-test guest run on the Debian rootfs image served by a
 * docker-registry inside the guest: time to the first `chroot <rootfs> /bin/ls /` output and bytes
 * fetched from the registry, (a) nydusd over fscache fetching chunks on demand, (b) the OCI image
 * pulled (`skopeo copy`) and unpacked (`umoci unpack`) first. Prints both and the ratios.
 *   node --import tsx bench/lazy.ts
 * Not a test: it asserts nothing. Under qemu TCG absolute figures are low; the ratios are the point.
 */
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { makeLazyPlan } from '../kernel-test/plan-lazy.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const plan = await makeLazyPlan();
// nydusd's start alone takes a minute or more under TCG on a busy machine.
const vm = spawnSync('bash', [path.join(repo, 'kernel-test/vm.sh'), path.join(repo, 'bench/guest-lazy.sh')], { encoding: 'utf8', maxBuffer: 1 << 26, env: { ...process.env, KT_TIMEOUT: process.env.KT_TIMEOUT ?? '1800' } });
const res = Object.fromEntries(vm.stdout.split('\n').filter((l) => l.startsWith('BENCH ')).map((l) => l.replace(/\r$/, '').split(' ').slice(1))
  .map(([k, s, b]) => [k, { s: Number(s), bytes: Number(b) }]));
if (vm.status !== 0 || !res.lazy || !res.full) {
  console.error(vm.stdout.slice(-3000));
  process.exit(1);
}
const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
console.log(`Debian ${plan.sourceTag} rootfs, Nydus blobs ${mib(plan.blobBytes)}; time to the first \`ls /\` output, bytes from the registry:`);
console.log(`| way | time to ls | fetched |\n|---|---|---|`);
console.log(`| nydusd lazy (fscache, registry backend) | ${res.lazy.s.toFixed(2)} s | ${mib(res.lazy.bytes)} |`);
console.log(`| skopeo copy + umoci unpack | ${res.full.s.toFixed(2)} s | ${mib(res.full.bytes)} |`);
console.log(`| ratio (full / lazy) | ${(res.full.s / res.lazy.s).toFixed(1)}x | ${(res.full.bytes / res.lazy.bytes).toFixed(1)}x |`);
