/**
 * The supervisor's worker follows it into its cgroups (src/daemon/cgroup-follow.ts): which cgroup.procs
 * file a hierarchy's path is, on cgroup v1, v2, hybrid hosts and in a cgroup namespace's mount.
 * The move itself on this machine's kernel: test/fanotify.root-kernel.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { followCgroups, parseCgroupMounts, parseProcCgroup, procsFile } from '../src/daemon/cgroup-follow.ts';

const V2_HOST = {
  mountinfo: '35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n',
  cgroup: '0::/system.slice/containerd.service\n',
};
const V1_HOST = {
  mountinfo: [
    '30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct',
    '31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory',
    '32 25 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd',
    '33 25 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:15 - cgroup2 cgroup2 rw',
  ].join('\n'),
  cgroup: '4:memory:/nydusd\n3:cpu,cpuacct:/nydusd\n1:name=systemd:/system.slice/x.service\n0::/system.slice/x.service\n',
};

test('cgroup hierarchies: the cgroup.procs file of a path, v2, v1 with joined controllers and name=, hybrid', () => {
  const v2 = parseCgroupMounts(V2_HOST.mountinfo);
  assert.equal(procsFile('0:', parseProcCgroup(V2_HOST.cgroup).get('0:')!, v2), '/sys/fs/cgroup/system.slice/containerd.service/cgroup.procs');
  const v1 = parseCgroupMounts(V1_HOST.mountinfo);
  const paths = parseProcCgroup(V1_HOST.cgroup);
  assert.deepEqual([...paths.keys()], ['4:memory', '3:cpu,cpuacct', '1:name=systemd', '0:']);
  assert.equal(procsFile('4:memory', '/nydusd', v1), '/sys/fs/cgroup/memory/nydusd/cgroup.procs');
  assert.equal(procsFile('3:cpu,cpuacct', '/nydusd', v1), '/sys/fs/cgroup/cpu,cpuacct/nydusd/cgroup.procs');
  assert.equal(procsFile('3:cpuacct,cpu', '/nydusd', v1), '/sys/fs/cgroup/cpu,cpuacct/nydusd/cgroup.procs', 'controllers in any order');
  assert.equal(procsFile('1:name=systemd', '/system.slice/x.service', v1), '/sys/fs/cgroup/systemd/system.slice/x.service/cgroup.procs');
  assert.equal(procsFile('0:', '/system.slice/x.service', v1), '/sys/fs/cgroup/unified/system.slice/x.service/cgroup.procs');
  assert.equal(procsFile('5:pids', '/nydusd', v1), null, 'a hierarchy not mounted here');
  // A mount of part of the hierarchy (another cgroup namespace's view): paths under its root only.
  const part = parseCgroupMounts('40 30 0:30 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n');
  assert.equal(procsFile('0:', '/kubepods/pod1/nydusd', part), '/sys/fs/cgroup/nydusd/cgroup.procs');
  assert.equal(procsFile('0:', '/kubepods/pod1', part), '/sys/fs/cgroup/cgroup.procs');
  assert.equal(procsFile('0:', '/kubepods/pod10', part), null);
  assert.equal(procsFile('0:', '/elsewhere', part), null);
});

test('followCgroups: the worker is written into each cgroup of the supervisor\'s it is not in, and what cannot be done is said', () => {
  const files: Record<string, string> = {
    '/proc/self/cgroup': V1_HOST.cgroup,
    '/proc/self/mountinfo': V1_HOST.mountinfo + '\n',
    // The worker stayed where both were before the supervisor was moved (memory and cpu).
    '/proc/42/cgroup': '4:memory:/\n3:cpu,cpuacct:/\n1:name=systemd:/system.slice/x.service\n0::/system.slice/x.service\n',
  };
  const writes: Array<[string, string]> = [];
  const read = (f: string) => {
    if (!(f in files)) throw new Error(`ENOENT: ${f}`);
    return files[f];
  };
  assert.deepEqual(followCgroups(42, read, (f, t) => writes.push([f, t])), []);
  assert.deepEqual(writes, [['/sys/fs/cgroup/memory/nydusd/cgroup.procs', '42'], ['/sys/fs/cgroup/cpu,cpuacct/nydusd/cgroup.procs', '42']]);
  // Already together: nothing written.
  files['/proc/42/cgroup'] = V1_HOST.cgroup;
  writes.length = 0;
  assert.deepEqual(followCgroups(42, read, (f, t) => writes.push([f, t])), []);
  assert.deepEqual(writes, []);
  // A write refused, a hierarchy not mounted: told; a worker gone: nothing to do.
  files['/proc/self/cgroup'] = '6:pids:/nydusd\n4:memory:/nydusd2\n';
  const failures = followCgroups(42, read, (f) => {
    throw new Error(`EACCES: ${f}`);
  });
  assert.deepEqual(failures, ['hierarchy 6:pids (/nydusd) is not mounted here', '/sys/fs/cgroup/memory/nydusd2/cgroup.procs: EACCES: /sys/fs/cgroup/memory/nydusd2/cgroup.procs']);
  assert.deepEqual(followCgroups(43, read, () => assert.fail('no write for a worker that is gone')), []);
});
