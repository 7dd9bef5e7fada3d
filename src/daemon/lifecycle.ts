/**
 * nydusd's lifecycle as nydus-snapshotter drives it (nydus service/src/daemon.rs state machine):
 *
 *   INIT --bind (fresh start)--> READY --start--> RUNNING
 *   INIT --takeover (--upgrade: state + /dev/cachefiles fd from the supervisor)--> READY --start--> RUNNING
 *
 * A fresh start binds the cache and goes on to RUNNING by itself; a daemon started with --upgrade
 * waits in INIT, without touching /dev/cachefiles, until PUT /api/v1/daemon/fuse/takeover, then
 * PUT /api/v1/daemon/start. While RUNNING, PUT /api/v1/daemon/fuse/sendfd hands the registered images
 * and the device fd to the supervisor, which keeps the cache bound across a crash or an upgrade.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { CachefilesDevice, receiveStateFromSupervisor, sendStateToSupervisor } from '../../native/fscache/index.ts';
import { NydusError, EINVAL } from '../../erofs/errors.ts';
import type { ImageRegistry } from './daemon.ts';
import { OnDemandSession } from './frontend/cachefiles.ts';
import type { DaemonState } from './state.ts';

export type DaemonStateName = 'INIT' | 'READY' | 'RUNNING' | 'STOPPED';

/** A request that does not fit the daemon's state (HTTP 409 in the API). */
export class StateError extends NydusError {
  constructor(message: string) {
    super(message, EINVAL);
    this.name = 'StateError';
  }
}

/** What a daemon hands to its supervisor: enough for a successor to serve the same mounts. */
interface HandedState {
  format: 'nydus-ts-fscache-state';
  version: 1;
  id: string;
  cacheDir: string;
  threads: number;
  /** The PUT /api/v2/blobs bodies of the registered images, in registration order. */
  images: unknown[];
}

export interface LifecycleOptions {
  id: string;
  cacheDir: string;
  threads: number;
  /** The snapshotter's supervisor socket, if any. */
  supervisor?: string;
  /**
   * Settles once the images of the state database are registered again (ImageRegistry.restore): a
   * takeover waits for it, the API does not (serve.ts).
   */
  restored?: Promise<void>;
}

export class DaemonLifecycle {
  state: DaemonStateName = 'INIT';
  private dev: CachefilesDevice | null = null;
  private tookOver = false;
  private session: OnDemandSession | null = null;

  constructor(
    private readonly opts: LifecycleOptions, private readonly registry: ImageRegistry,
    private readonly chunkState: DaemonState, private readonly log: Logger,
  ) {}

  get currentSession(): OnDemandSession | null {
    return this.session;
  }

  /** A fresh start (or our own supervisor's restart of a worker): the device is ours, serve at once. */
  bind(dev: CachefilesDevice, restored: boolean): void {
    this.expect('INIT', 'bind the cache');
    this.attach(dev, restored);
    this.start();
  }

  /** PUT /api/v1/daemon/fuse/takeover: state and device fd from the supervisor, then READY. */
  async takeover(): Promise<void> {
    this.expect('INIT', 'take over');
    const supervisor = this.needSupervisor('takeover');
    await this.opts.restored;
    const { data, fd } = await receiveStateFromSupervisor(supervisor);
    const dev = fd >= 0 ? CachefilesDevice.fromFd(fd) : null;
    try {
      if (!dev) throw new NydusError(`supervisor ${supervisor} sent no /dev/cachefiles fd`);
      const handed = parseHandedState(data, supervisor);
      if (path.resolve(handed.cacheDir) !== path.resolve(this.opts.cacheDir)) {
        throw new NydusError(`supervisor ${supervisor} holds the state of a daemon on ${handed.cacheDir}, this one serves ${this.opts.cacheDir}`);
      }
      const known = new Set(this.registry.list().map((e) => e.id));
      for (const body of handed.images) {
        const id = (body as { id?: unknown }).id;
        if (typeof id === 'string' && known.has(id)) continue;
        await this.registry.add(body);
      }
      this.attach(dev, true);
      this.tookOver = true;
      this.log.info({ images: handed.images.length, from: handed.id }, 'took over from the supervisor');
    } catch (e) {
      dev?.close();
      throw e;
    }
  }

  /** PUT /api/v1/daemon/start: READY -> RUNNING (the kernel's requests are served from now on). */
  start(): void {
    this.expect('READY', 'start');
    // In an upgrade the old daemon served on until it was told to exit: what it read and left
    // unanswered since the takeover is resent too.
    if (this.tookOver) this.dev!.restore();
    this.dev!.onMessage((msg) => this.session!.handle(msg), (err) => this.log.warn({ err: err.message }, 'bad message from the kernel'));
    this.state = 'RUNNING';
    this.log.info({ id: this.opts.id }, 'nydusd running');
  }

  /**
   * PUT /api/v1/daemon/fuse/sendfd: the registered images and the device fd to the supervisor. Without
   * a supervisor there is nothing to do (as nydusd). With one, the supervisor waits for a connection
   * whatever happens, so even a daemon with nothing to send connects (and closes) before it fails.
   */
  async sendfd(): Promise<void> {
    const supervisor = this.opts.supervisor;
    if (!supervisor) return;
    if (!this.dev) {
      await sendStateToSupervisor(supervisor, new Uint8Array(0), -1).catch(() => undefined);
      throw new StateError(`cannot send the fd in state ${this.state}: this daemon holds no /dev/cachefiles fd yet`);
    }
    const handed: HandedState = {
      format: 'nydus-ts-fscache-state', version: 1, id: this.opts.id, cacheDir: this.opts.cacheDir,
      threads: this.opts.threads, images: this.registry.bodies(),
    };
    await sendStateToSupervisor(supervisor, Buffer.from(JSON.stringify(handed)), this.dev!.fd);
    this.log.info({ supervisor, images: handed.images.length }, 'state and fd sent to the supervisor');
  }

  /**
   * DELETE /api/v2/blobs?blob_id=<id>: culls the blob's cache files in every volume (as nydusd's
   * cull_cache): `<cache dir>/cache/Ierofs,<volume>/@<fan-out>/D<id>`, through the device's `cull`
   * command, which names a file in the daemon's working directory. Files the kernel still uses stay.
   */
  async cull(blobId: string): Promise<void> {
    if (!this.dev) throw new StateError(`cannot cull cache files in state ${this.state}`);
    if (!/^[0-9A-Za-z._-]+$/.test(blobId)) throw new StateError(`blob_id ${JSON.stringify(blobId)} cannot name a cache file`);
    const root = path.join(this.opts.cacheDir, 'cache');
    const failed: string[] = [];
    const cwd = process.cwd();
    try {
      for (const vol of fs.existsSync(root) ? fs.readdirSync(root) : []) {
        if (!vol.startsWith('Ierofs,')) continue;
        for (const fan of fs.readdirSync(path.join(root, vol))) {
          const dir = path.join(root, vol, fan);
          if (!fan.startsWith('@') || !fs.existsSync(path.join(dir, `D${blobId}`))) continue;
          try {
            process.chdir(dir);
            this.dev.command(`cull D${blobId}`);
            this.chunkState.clear({ volume: vol.slice(1), cookie: blobId });
            this.log.info({ volume: vol.slice(1), blob: blobId }, 'culled a cache file');
          } catch (e) {
            failed.push(`${vol.slice(1)}: ${(e as Error).message}`);
          }
        }
      }
    } finally {
      process.chdir(cwd);
    }
    if (failed.length) throw new NydusError(`failed to cull blob objects from fscache: ${failed.join('; ')}`);
  }

  /** Stops serving: objects closed, the device released (the supervisor may still hold it). */
  stop(): void {
    this.dev?.stopMessages();
    this.session?.closeAll();
    this.dev?.close();
    this.state = 'STOPPED';
  }

  private attach(dev: CachefilesDevice, restored: boolean): void {
    this.dev = dev;
    this.session = new OnDemandSession(dev, this.registry, this.chunkState, this.log, this.opts.threads);
    if (restored) {
      // The kernel resends the requests the previous daemon left unanswered (and reopens its objects);
      // without this they would wait forever. nydusd's fscache mode does the same whatever
      // --failover-policy says: that policy chooses between flushing and resending FUSE requests.
      dev.restore();
      this.log.info('asked the kernel to resend pending requests');
    }
    this.state = 'READY';
  }

  private expect(state: DaemonStateName, what: string): void {
    if (this.state !== state) throw new StateError(`cannot ${what} in state ${this.state} (needs ${state})`);
  }

  private needSupervisor(what: string): string {
    if (!this.opts.supervisor) throw new StateError(`${what} needs a supervisor socket (nydusd --supervisor <path>)`);
    return this.opts.supervisor;
  }
}

function parseHandedState(data: Buffer, from: string): HandedState {
  let v: HandedState;
  try {
    v = JSON.parse(data.toString('utf8'));
  } catch {
    throw new NydusError(`supervisor ${from} sent a state that is not nydus-ts's (${data.length} bytes, not JSON)`);
  }
  if (v?.format !== 'nydus-ts-fscache-state' || v.version !== 1 || !Array.isArray(v.images) || typeof v.cacheDir !== 'string') {
    throw new NydusError(`supervisor ${from} sent a state that is not nydus-ts's fscache state version 1`);
  }
  return v;
}
