/**
 * The worker follows its supervisor into the cgroups it is moved to. nydus-snapshotter puts the nydusd
 * it started into its cgroup (its `[cgroup]` memory limit) by writing that one pid to cgroup.procs once
 * the daemon is RUNNING; our worker, started before, would stay where it was, outside the limit, with
 * the cache, the fetch buffers and the bootstraps. So the supervisor looks at its own cgroups now and
 * then and moves its worker where it finds itself, in every hierarchy (cgroup v1 and v2, hybrid too).
 */
import fs from 'node:fs';
import path from 'node:path';

/** A hierarchy of /proc/<pid>/cgroup (`<id>:<controllers>`) and the process's path in it. */
export type CgroupPaths = Map<string, string>;

/** The lines of /proc/<pid>/cgroup: `hierarchy-id:controllers:path`, by `hierarchy-id:controllers`. */
export function parseProcCgroup(text: string): CgroupPaths {
  const out: CgroupPaths = new Map();
  for (const line of text.split('\n')) {
    const m = /^(\d+):([^:]*):(\/.*)$/.exec(line);
    if (m) out.set(`${m[1]}:${m[2]}`, m[3]);
  }
  return out;
}

/** A cgroup file system mount: what hierarchy it is (`controllers`, '' for cgroup2), its root and where it is. */
export interface CgroupMount {
  version: 1 | 2;
  /** v1: its controllers and `name=` options, as /proc/<pid>/cgroup lists them. */
  controllers: string;
  root: string;
  mountpoint: string;
}

/** A mountinfo field with its octal escapes (`\040` for a space) undone. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The cgroup mounts of /proc/self/mountinfo. */
export function parseCgroupMounts(mountinfo: string): CgroupMount[] {
  const out: CgroupMount[] = [];
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const [, , , root, mountpoint] = line.slice(0, sep).split(' ');
    const [fstype, , superOptions = ''] = line.slice(sep + 3).split(' ');
    if (fstype === 'cgroup2') out.push({ version: 2, controllers: '', root: unescape(root), mountpoint: unescape(mountpoint) });
    else if (fstype === 'cgroup') {
      const controllers = superOptions.split(',').filter((o) => !['rw', 'ro'].includes(o) && (!o.includes('=') || o.startsWith('name=')) && !['noprefix', 'clone_children', 'cpuset_v2_mode', 'xattr', 'nsdelegate', 'memory_recursiveprot', 'favordynmods'].includes(o));
      out.push({ version: 1, controllers: controllers.sort().join(','), root: unescape(root), mountpoint: unescape(mountpoint) });
    }
  }
  return out;
}

/** The cgroup.procs file of `cgroupPath` in hierarchy `key` (`<id>:<controllers>`), or null when it is not mounted here. */
export function procsFile(key: string, cgroupPath: string, mounts: readonly CgroupMount[]): string | null {
  const controllers = key.slice(key.indexOf(':') + 1);
  const mount = controllers === ''
    ? mounts.find((m) => m.version === 2)
    : mounts.find((m) => m.version === 1 && m.controllers === controllers.split(',').sort().join(','));
  if (!mount) return null;
  const root = mount.root === '/' ? '' : mount.root;
  if (root && cgroupPath !== root && !cgroupPath.startsWith(`${root}/`)) return null;
  return path.join(mount.mountpoint, cgroupPath.slice(root.length), 'cgroup.procs');
}

/**
 * Moves `pid` into each cgroup this process is in and it is not. Returns what could not be done, a
 * line each (a hierarchy not mounted here, a write refused): the caller tells it once.
 */
export function followCgroups(pid: number, read: (file: string) => string = (f) => fs.readFileSync(f, 'utf8'), write: (file: string, text: string) => void = (f, t) => fs.writeFileSync(f, t)): string[] {
  const mine = parseProcCgroup(read('/proc/self/cgroup'));
  let theirs: CgroupPaths;
  try {
    theirs = parseProcCgroup(read(`/proc/${pid}/cgroup`));
  } catch {
    return []; // gone meanwhile: its successor is followed next time
  }
  const failures: string[] = [];
  let mounts: CgroupMount[] | null = null;
  for (const [key, where] of mine) {
    if (theirs.get(key) === where) continue;
    mounts ??= parseCgroupMounts(read('/proc/self/mountinfo'));
    const procs = procsFile(key, where, mounts);
    if (!procs) {
      failures.push(`hierarchy ${key} (${where}) is not mounted here`);
      continue;
    }
    try {
      write(procs, String(pid));
    } catch (e) {
      failures.push(`${procs}: ${(e as Error).message}`);
    }
  }
  return failures;
}
