/**
 * The guest side of the lazy-pull plan (kernel-test/plan-lazy.ts), shared by the lazy-pull scenario and
 * bench/lazy.ts: loopback up, Debian's docker-registry serving the plan's storage read-only on
 * 127.0.0.1, a counting (and fault-injecting) proxy in front of it, nydusd in fscache mode, and images
 * registered the way nydus-snapshotter does it (bootstrap layer pulled to a file, `config_v2` with the
 * registry backend PUT to /api/v2/blobs).
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { RegistryClient, parseReference, withDigest } from '../../src/registry/index.ts';
import { pullBootstrap } from '../../src/convert/check.ts';
import { isBootstrapLayer, isNydusBlobLayer } from '../../src/convert/nydus-format.ts';
import { readLazyPlan, type LazyPlan } from '../plan-lazy.ts';
import { startRegistry, type RegistryServer } from '../../test/helpers/registry.ts';
import { FaultProxy } from '../../test/helpers/registry-proxy.ts';
import { apiRequest } from '../../test/helpers/api-client.ts';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');

export interface NydusImage {
  /** The bootstrap pulled from the image's bootstrap layer. */
  boot: string;
  /** `sha256:<hex>` of the blob layers: the ranges nydusd reads. */
  blobDigests: string[];
}

export class LazyEnv {
  readonly scratch = process.env.KT_SCRATCH ?? '/tmp';
  readonly cacheDir = path.join(process.env.KT_CACHE ?? '/var/cache', 'fscache');
  readonly sock = path.join(this.scratch, 'nydusd.sock');
  registry!: RegistryServer;
  proxy!: FaultProxy;
  daemon?: ChildProcess;
  private readonly mounted: string[] = [];

  constructor(readonly plan: LazyPlan = readLazyPlan()) {}

  /** Loopback, the read-only registry and the proxy in front of it. */
  async startRegistry(): Promise<void> {
    execFileSync('ip', ['link', 'set', 'lo', 'up']);
    // The helpers' temp dirs (registry config) must be on the writable scratch, not the read-only host root.
    process.env.NYDUS_TEST_TMP = this.scratch;
    this.registry = await startRegistry({ storage: this.plan.storage, readOnly: true });
    this.proxy = await FaultProxy.start(this.registry.url);
  }

  /** Stops the registry process (the proxy keeps listening and fails what it forwards). */
  async stopRegistry(): Promise<void> {
    await this.registry.stop();
  }

  /** The registry again, on its old port (where the proxy forwards). */
  async restartRegistry(): Promise<void> {
    this.registry = await startRegistry({ storage: this.plan.storage, readOnly: true, port: this.registry.port });
  }

  async startDaemon(): Promise<void> {
    fs.mkdirSync(this.cacheDir, { recursive: true });
    this.daemon = spawn(path.join(repo, 'bin/nydusd'), ['singleton', '--fscache', this.cacheDir, '--apisock', this.sock, '--log-level', 'warn'], { stdio: ['ignore', 'inherit', 'inherit'] });
    for (let i = 0; i < 600; i++) {
      if (this.daemon.exitCode !== null) throw new Error(`nydusd exited with ${this.daemon.exitCode}`);
      try {
        if ((await this.api('GET', '/api/v1/daemon')).status === 200) return;
      } catch { /* not up yet */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('nydusd API did not come up within 60 s');
  }

  api(method: string, url: string, body?: unknown) {
    return apiRequest(this.sock, method, url, body);
  }

  /** `<proxy>/<repo>:<tag>`: what nydusd and the pulls see as the registry. */
  ref(tag: string): string {
    return `${this.proxy.host}/${this.plan.repo}:${tag}`;
  }

  /** The Nydus image's manifest resolved and its bootstrap layer unpacked to a file, as the snapshotter does. */
  async pullNydusImage(): Promise<NydusImage> {
    const client = new RegistryClient({ plainHttp: true, dockerConfig: false });
    try {
      const ref = parseReference(this.ref(this.plan.nydusTag));
      const image = (await client.resolveImage(ref)).images[0];
      if (!image) throw new Error(`${this.ref(this.plan.nydusTag)}: no image for this platform`);
      const layers = image.manifest.json.layers;
      const bootLayer = layers.find(isBootstrapLayer);
      if (!bootLayer) throw new Error(`${this.ref(this.plan.nydusTag)}: no bootstrap layer`);
      const boot = path.join(this.scratch, 'image.boot');
      const pulled = await pullBootstrap(client, withDigest(ref, image.manifest.digest), bootLayer, boot);
      if (!pulled.found) throw new Error(`${bootLayer.digest}: no image/image.boot in the bootstrap layer`);
      return { boot, blobDigests: layers.filter(isNydusBlobLayer).map((l) => l.digest) };
    } finally {
      await client.close();
    }
  }

  /** Blob bytes fetched through the proxy so far (the bootstrap layer and manifests not counted). */
  blobBytesFetched(img: NydusImage): number {
    return this.proxy.bytesFetched(new RegExp(`/blobs/(${img.blobDigests.join('|')})$`));
  }

  /** PUT /api/v2/blobs with the registry backend, as nydus-snapshotter's fscache mode does. */
  async registerRegistryImage(id: string, img: NydusImage, prefetch?: unknown): Promise<void> {
    await this.register(id, img.boot, {
      type: 'registry',
      registry: { scheme: 'http', host: this.proxy.host, repo: this.plan.repo, timeout: 5, connect_timeout: 5, retry_limit: 2 },
    }, prefetch);
  }

  /** Chunks of `blobId` in the cache file of the image mounted as `id`. */
  async cachedChunks(id: string, blobId: string): Promise<number> {
    const m = (await this.api('GET', `/api/v1/metrics/blobcache?blob_id=${blobId}`)).body as { cache_files?: Array<{ volume: string; cached_chunks: number }> };
    return m.cache_files?.find((f) => f.volume === `erofs,${id}`)?.cached_chunks ?? 0;
  }

  async registerLocalImage(id: string, boot: string, blobDir: string): Promise<void> {
    await this.register(id, boot, { type: 'localfs', localfs: { dir: blobDir } });
  }

  private async register(id: string, boot: string, backend: unknown, prefetch?: unknown): Promise<void> {
    const r = await this.api('PUT', '/api/v2/blobs', {
      type: 'bootstrap', id, domain_id: '',
      config_v2: {
        version: 2, id, backend,
        cache: { type: 'fscache', fscache: { work_dir: path.join(this.cacheDir, id) } },
        metadata_path: boot,
        ...(prefetch ? { rafs: { prefetch } } : {}),
      },
    });
    if (r.status !== 204) throw new Error(`PUT /api/v2/blobs ${id}: ${r.status} ${JSON.stringify(r.body)}`);
  }

  mount(id: string): string {
    const dir = path.join(this.scratch, `mnt-${id}`);
    fs.mkdirSync(dir, { recursive: true });
    execFileSync('mount', ['-t', 'erofs', '-o', `fsid=${id}`, 'none', dir], { stdio: 'pipe' });
    this.mounted.push(dir);
    return dir;
  }

  async close(): Promise<number | null> {
    for (const d of [...this.mounted].reverse()) try { execFileSync('umount', [d], { stdio: 'pipe' }); } catch { /* busy */ }
    let code: number | null = null;
    if (this.daemon) {
      const d = this.daemon;
      const exited = new Promise<number | null>((r) => d.once('exit', (c) => r(c)));
      d.kill('SIGTERM');
      code = await exited;
    }
    await this.proxy?.close();
    await this.registry?.stop();
    return code;
  }
}
