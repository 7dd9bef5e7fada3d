/**
 * nydusd configuration as Nydus users write it: the BlobCacheEntry that nydus-snapshotter PUTs to
 * /api/v2/blobs in fscache mode, with either the legacy `config` or `config_v2`
 * (nydus api/src/config.rs). Parsed into one typed shape; bad input is a ConfigError naming the field.
 */
import { NydusError, EINVAL } from '../../erofs/errors.ts';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { badPathText } from './log.ts';
import { MAX_JSON_DEPTH, jsonDepth } from '../registry/validate.ts';
import { nameableAsDevice } from '../../native/fscache/fanotify.ts';
import { type HttpProxyBackendConfig, type RegistryBackendConfig, httpProxyConfigFrom, registryConfigFrom } from './backend/remote-config.ts';

export class ConfigError extends NydusError {
  constructor(message: string) {
    super(message, EINVAL);
    this.name = 'ConfigError';
  }
}

/**
 * A path a mount request gives (the API's query and body, the command line): absolute, no NUL byte,
 * no longer than PATH_MAX; normalized. A ConfigError naming `what` otherwise (`note` said after
 * "must be an absolute path").
 */
export function absolutePathField(p: unknown, what: string, note = ''): string {
  if (typeof p !== 'string' || !p) throw new ConfigError(`${what} is required`);
  const bad = badPathText(p);
  if (bad) throw new ConfigError(`${what} ${JSON.stringify(p.slice(0, 200))}${p.length > 200 ? '...' : ''} ${bad}`);
  if (!path.isAbsolute(p)) throw new ConfigError(`${what} ${JSON.stringify(p)} must be an absolute path${note}`);
  return path.resolve(p);
}

export interface LocalFsBackendConfig {
  type: 'localfs';
  /** localfs: directory holding blobs named by their ids ('' with blobFile alone). */
  dir: string;
  /** nydus's `alt_dirs`: where a blob not in `dir` is looked for next, in order. */
  altDirs?: string[];
  /** nydus's `blob_file`: the one file every blob id reads (an image of one blob). */
  blobFile?: string;
}

export type BackendConfig = LocalFsBackendConfig | RegistryBackendConfig | HttpProxyBackendConfig;

export interface ImageEntry {
  /** The fsid the kernel mounts with (`-o fsid=<id>`). */
  id: string;
  /** Blobs are shared between images of one domain (`-o domain_id=<d>`). */
  domainId: string;
  /** The bootstrap file. */
  metadataPath: string;
  backend: BackendConfig;
  prefetch: PrefetchConfig;
  /** The cache's work dir as the entry states it (`cache.fscache.work_dir`); empty when not given. */
  workDir: string;
  /**
   * I/O amplification (nydus's `amplify_io`, `rafs.batch_size` in config_v2): a demand READ at offset o
   * also fills the chunks that follow it in the blob and end by o + this many bytes.
   */
  amplifyIo: number;
}

/** nydus's default_user_io_batch_size, and the least and most it takes. */
export const AMPLIFY_IO_DEFAULT = 1 << 20;
const AMPLIFY_IO_MIN = 0x20000;
const AMPLIFY_IO_MAX = 0x10000000;

/** The window under `key` of `o` (v2's `rafs.batch_size`, v1's top-level `amplify_io`), checked as nydusd's validate() does. */
function amplifyIoFrom(o: Json, where: string, key = 'batch_size'): number {
  const v = count(o, key, where, AMPLIFY_IO_DEFAULT);
  if (v > AMPLIFY_IO_MAX) throw new ConfigError(`${where}.${key} must be at most ${AMPLIFY_IO_MAX} bytes`);
  // As nydusd: a smaller window (0 too) is raised to 128 KiB.
  return Math.max(v, AMPLIFY_IO_MIN);
}

/**
 * Background prefetch of an image's data after mount (nydus's prefetch config: `prefetch_config` in the
 * legacy form, `cache.prefetch` / `rafs.prefetch` in config_v2).
 */
export interface PrefetchConfig {
  enable: boolean;
  /** Chunks fetched at once. */
  threads: number;
  /** Adjacent chunks are fetched in one backend read of up to this many bytes (a config's 0: the default, 1 MiB, as nydusd). */
  batchSize: number;
  /** Bytes per second from the backend for prefetch (0: no limit). */
  bandwidthLimit: number;
  /** After the prefetch table's files, every other chunk of the image's blobs too. */
  all: boolean;
  /**
   * nydus's `stream_prefetch`: each blob whole, in one backend request from its first chunk not cached
   * (a GET without Range, which a Dragonfly proxy caches whole), in place of the prefetch table's files.
   */
  stream: boolean;
}

/** nydusd's bounds of an enabled prefetch config. */
const PREFETCH_THREADS_MAX = 1024;
const PREFETCH_BATCH_MAX = 0x10000000;
/** The most prefetch batches in flight at once, whatever more the config asks. */
const PREFETCH_THREADS_IN_FLIGHT = 64;

const PREFETCH_DEFAULTS: PrefetchConfig = { enable: false, threads: 8, batchSize: 1 << 20, bandwidthLimit: 0, all: false, stream: false };

export type Json = Record<string, unknown>;

export function count(o: Json, key: string, where: string, fallback: number): number {
  const v = o[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new ConfigError(`${where}.${key} must be a whole number >= 0`);
  return v;
}

export function flag(o: Json, key: string, where: string): boolean {
  const v = o[key];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw new ConfigError(`${where}.${key} must be true or false`);
  return v;
}

/**
 * What `prefetch_all` means where the entry comes from. The blob cache's prefetch (`config_v2.cache.
 * prefetch`, the legacy `prefetch_config`) of an entry registered by PUT /api/v2/blobs (fscache mode,
 * `'whole-blob'`): nydusd's fscache manager prefetches every blob whole once it is on, whatever
 * prefetch_all says (the snapshotter always writes false), so here the prefetch table's files come
 * first and then the rest of the blob. The file system's prefetch (`config_v2.rafs.prefetch`, and any
 * of a FUSE-mode config, fanotify mounts: `'fs'`): the table's files, and with prefetch_all every other
 * chunk too; prefetch_all is true unless said in v1's `fs_prefetch`, false unless said in v2, as nydus's
 * defaults are.
 */
export type PrefetchAllRule = 'whole-blob' | 'fs';

/** A prefetch config under nydus's field names of either form (`names` maps ours to theirs). */
function prefetchFrom(o: Json, where: string, names: { threads: string; batchSize: string; bandwidthLimit: string }, all: PrefetchAllRule, allDefault: boolean): PrefetchConfig {
  const threads = count(o, names.threads, where, PREFETCH_DEFAULTS.threads);
  // 0 is nydusd's default too (rafs/src/fs.rs, service/src/fs_cache.rs), not a batch of nothing.
  const batchSize = count(o, names.batchSize, where, PREFETCH_DEFAULTS.batchSize) || PREFETCH_DEFAULTS.batchSize;
  const asked = o.prefetch_all === undefined || o.prefetch_all === null ? allDefault : flag(o, 'prefetch_all', where);
  const enable = flag(o, 'enable', where);
  // As nydusd's validate() (CacheConfigV2, RafsConfigV2; the legacy forms are converted to them).
  if (enable && (threads === 0 || threads > PREFETCH_THREADS_MAX)) throw new ConfigError(`${where}.${names.threads} must be 1 to ${PREFETCH_THREADS_MAX} with prefetch enabled`);
  if (enable && batchSize > PREFETCH_BATCH_MAX) throw new ConfigError(`${where}.${names.batchSize} must be at most ${PREFETCH_BATCH_MAX} (0x10000000) with prefetch enabled`);
  return {
    enable,
    // Batches in flight at once: more than 64 would only hold more memory (a batch of a remote
    // backend is read whole before it is verified).
    threads: Math.min(threads, PREFETCH_THREADS_IN_FLIGHT),
    batchSize,
    bandwidthLimit: bandwidthFrom(o, where, names.bandwidthLimit),
    all: all === 'whole-blob' ? true : asked,
    stream: flag(o, 'stream_prefetch', where),
  };
}

/** Prefetch bytes per second (0: no limit); nydus's u32. Any other rate is honoured, however low (blob-cache.ts's Pacer). */
function bandwidthFrom(o: Json, where: string, key: string): number {
  const v = count(o, key, where, 0);
  if (v > 0xffffffff) throw new ConfigError(`${where}.${key} must be at most ${0xffffffff} (bytes per second; 0 is no limit)`);
  return v;
}

export function obj(v: unknown, where: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(`${where} must be a JSON object`);
  return v as Json;
}

export function str(o: Json, key: string, where: string, required = true): string {
  const v = o[key];
  if (v === undefined || v === null || v === '') {
    if (required) throw new ConfigError(`${where}.${key} is required`);
    return '';
  }
  if (typeof v !== 'string') throw new ConfigError(`${where}.${key} must be a string`);
  return v;
}

/** A backend of nydus's `type` and its config (`backend_config`, v2's `backend.<type>`), checked; `where` names the config in errors. */
export function backendFrom(type: string, cfg: Json, where: string): BackendConfig {
  if (type === 'localfs') {
    const dir = str(cfg, 'dir', where, false);
    const blobFile = str(cfg, 'blob_file', where, false);
    if (!dir && !blobFile) throw new ConfigError(`${where}.dir (or blob_file) is required for the localfs backend`);
    const alt = cfg.alt_dirs ?? [];
    if (!Array.isArray(alt) || alt.some((d) => typeof d !== 'string' || d === '')) throw new ConfigError(`${where}.alt_dirs must be an array of directory paths`);
    return { type: 'localfs', dir, ...(alt.length ? { altDirs: alt as string[] } : {}), ...(blobFile ? { blobFile } : {}) };
  }
  if (type === 'registry') return registryConfigFrom(cfg, where);
  if (type === 'http-proxy') return httpProxyConfigFrom(cfg, where);
  throw new ConfigError(`backend type ${JSON.stringify(type)} is not supported (supported: localfs, registry, http-proxy)`);
}

/**
 * What a cache config may ask that the kernel cannot read: it reads the cache files itself, so they
 * hold the chunks as they are, uncompressed and in the clear (nydusd's fscache manager refuses a
 * compressed cache too). `cache` is the cache section, `typed` its cache type's own (filecache's
 * `enable_encryption`). Either is refused naming the field, never dropped: the user asked for it.
 */
function refuseUnreadableCache(cache: Json, cacheWhere: string, typed: Json, typedWhere: string): void {
  if (cache.compressed === true) {
    throw new ConfigError(`${cacheWhere}.compressed: the kernel reads the cache files directly, so they hold uncompressed chunks; leave it out or false`);
  }
  if (typed.enable_encryption === true) {
    throw new ConfigError(`${typedWhere}.enable_encryption: the kernel reads the cache files directly, so they cannot be encrypted; leave it out or false`);
  }
}

/**
 * nydus's switches that change nothing here, checked as nydusd's serde checks them (a value of
 * another type fails the whole config): digest validation (always on: every chunk is verified),
 * xattrs (the kernel serves an image's own), per-file counters and access traces (always kept,
 * bounded). A file system section's (v2 `rafs`, v1's top level) and a cache's (`validate`).
 */
const FS_SWITCHES = ['validate', 'digest_validate', 'enable_xattr', 'iostats_files', 'access_pattern', 'latest_read_files'];
const CACHE_SWITCHES = ['validate', 'compressed'];

function checkSwitches(o: Json, keys: readonly string[], where: string): void {
  for (const k of keys) flag(o, k, where);
}

/** nydus's RafsConfig mode: "direct" or "cached" (what nydusd's validate() allows; the kernel reads either way). */
function checkRafsMode(o: Json, where: string): void {
  const mode = o.mode;
  if (mode !== undefined && mode !== null && mode !== 'direct' && mode !== 'cached') {
    throw new ConfigError(`${where}.mode ${JSON.stringify(mode)} must be "direct" or "cached"`);
  }
}

function checkFscache(type: string, where: string): void {
  if (type && type !== 'fscache') throw new ConfigError(`${where} is ${JSON.stringify(type)}; this daemon serves the fscache cache type`);
}

/**
 * Where an entry's body comes from: PUT /api/v2/blobs (fscache mode), or a FUSE-mode config file made
 * into one (entryBodyFromFsConfig: fanotify mounts), whose field names errors give and whose prefetch
 * is the file system's (PrefetchAllRule 'fs').
 */
export type EntryOrigin = 'blob-cache' | 'fs-config';

/** Parses a BlobCacheEntry body (the whole JSON of PUT /api/v2/blobs, or one made of a file system's config). */
export function parseBlobCacheEntry(body: unknown, origin: EntryOrigin = 'blob-cache'): ImageEntry {
  const fromFsConfig = origin === 'fs-config';
  const prefetchAll: PrefetchAllRule = fromFsConfig ? 'fs' : 'whole-blob';
  const e = obj(body, 'body');
  const type = str(e, 'type', 'body');
  if (type !== 'bootstrap') throw new ConfigError(`body.type ${JSON.stringify(type)} is not supported (supported: bootstrap)`);
  const id = str(e, 'id', 'body');
  if (/[,\s/]/.test(id)) throw new ConfigError(`body.id ${JSON.stringify(id)} must not contain commas, slashes or spaces`);
  const domainId = str(e, 'domain_id', 'body', false);
  if (/[,\s/]/.test(domainId)) throw new ConfigError(`body.domain_id ${JSON.stringify(domainId)} must not contain commas, slashes or spaces`);
  if (e.config_v2 !== undefined) {
    // (An entry made of a FUSE-mode config, a fanotify mount's, names its fields as that config has them.)
    const v2 = fromFsConfig ? 'config' : 'config_v2';
    const c = obj(e.config_v2, v2);
    const backend = obj(c.backend, `${v2}.backend`);
    const btype = str(backend, 'type', `${v2}.backend`);
    const bcfg = obj(backend[btype] ?? {}, `${v2}.backend.${btype}`);
    const cache = c.cache === undefined ? {} : obj(c.cache, `${v2}.cache`);
    checkFscache(typeof cache.type === 'string' ? cache.type : '', `${v2}.cache.type`);
    const fscache = cache.fscache === undefined ? {} : obj(cache.fscache, `${v2}.cache.fscache`);
    refuseUnreadableCache(cache, `${v2}.cache`, fscache, `${v2}.cache.fscache`);
    const rafs = c.rafs === undefined ? {} : obj(c.rafs, `${v2}.rafs`);
    checkRafsMode(rafs, `${v2}.rafs`);
    checkSwitches(rafs, FS_SWITCHES, `${v2}.rafs`);
    checkSwitches(cache, CACHE_SWITCHES, `${v2}.cache`);
    // The blob cache's prefetch, or the file system's (nydus has both; either turns it on here).
    const v2Names = { threads: 'threads', batchSize: 'batch_size', bandwidthLimit: 'bandwidth_limit' };
    const fromCache = cache.prefetch === undefined ? null : prefetchFrom(obj(cache.prefetch, `${v2}.cache.prefetch`), `${v2}.cache.prefetch`, v2Names, prefetchAll, false);
    const fromRafs = rafs.prefetch === undefined ? null : prefetchFrom(obj(rafs.prefetch, `${v2}.rafs.prefetch`), `${v2}.rafs.prefetch`, v2Names, 'fs', false);
    const chosen = (fromCache?.enable ? fromCache : fromRafs?.enable ? fromRafs : null) ?? PREFETCH_DEFAULTS;
    // A file system's config (fanotify mounts) says in rafs.prefetch whether the whole image comes
    // (nydus's RafsConfigV2: the file system's prefetch); cache.prefetch, when on, gives the workers.
    const taken = fromFsConfig && fromRafs?.enable ? { ...chosen, all: fromRafs.all } : chosen;
    // nydusd reads stream_prefetch from the file system's prefetch (rafs/src/fs.rs): that one's when
    // it is on, whichever section gives the workers.
    const prefetch = fromRafs?.enable ? { ...taken, stream: fromRafs.stream } : taken;
    if (c.overlay !== undefined && c.overlay !== null) {
      throw new ConfigError(`${v2}.overlay: a writable upper layer is not supported by nydus-ts; mount overlayfs over the image's mountpoint instead`);
    }
    return {
      id, domainId,
      metadataPath: str(c, 'metadata_path', v2),
      backend: backendFrom(btype, bcfg, `${v2}.backend.${btype}`),
      prefetch,
      workDir: str(fscache, 'work_dir', `${v2}.cache.fscache`, false),
      amplifyIo: amplifyIoFrom(rafs, `${v2}.rafs`),
    };
  }
  if (e.config !== undefined) {
    const c = obj(e.config, 'config');
    // An entry made of a v1 FUSE-mode config (entryBodyFromFsConfig, fanotify mounts) names the
    // fields as that file has them: its device.backend and fs_prefetch.
    const backendAt = fromFsConfig ? 'config.device.backend.config' : 'config.backend_config';
    const prefetchAt = fromFsConfig ? 'config.fs_prefetch' : 'config.prefetch_config';
    checkFscache(str(c, 'cache_type', 'config', false), 'config.cache_type');
    const btype = str(c, 'backend_type', 'config');
    const prefetch = c.prefetch_config === undefined ? PREFETCH_DEFAULTS
      : prefetchFrom(obj(c.prefetch_config, prefetchAt), prefetchAt, { threads: 'threads_count', batchSize: 'merging_size', bandwidthLimit: 'bandwidth_rate' }, prefetchAll, true);
    const cacheConfig = c.cache_config === undefined ? {} : obj(c.cache_config, 'config.cache_config');
    return {
      id, domainId,
      metadataPath: str(c, 'metadata_path', 'config'),
      backend: backendFrom(btype, obj(c.backend_config ?? {}, backendAt), backendAt),
      prefetch,
      workDir: str(cacheConfig, 'work_dir', 'config.cache_config', false),
      // The legacy entry has no file system section: nydusd uses its default. The entry this daemon
      // makes of a v1 FUSE-mode config (entryBodyFromFsConfig) carries that config's `amplify_io`.
      amplifyIo: amplifyIoFrom(c, 'config', 'amplify_io'),
    };
  }
  throw new ConfigError('body needs either config_v2 or config');
}

/**
 * JSON text of a request or a config, refused (naming `what`) past MAX_JSON_DEPTH levels: what is
 * taken is written again (the state database, the mounts file), and JSON.stringify runs out of stack
 * some thousands of levels down (a registration body that deep was taken, then failed as it was
 * saved, and so did every later one of its id).
 */
export function parseJsonText(text: string, what: string): unknown {
  if (jsonDepth(Buffer.from(text), MAX_JSON_DEPTH) > MAX_JSON_DEPTH) throw new ConfigError(`${what} nests deeper than ${MAX_JSON_DEPTH} levels`);
  return JSON.parse(text);
}

/**
 * The text of a nydusd config (a `--config` file, the `config` string of POST /api/v1/mount) as
 * nydusd reads it (ConfigV2::from_str in nydus's api/src/config.rs): JSON (v2 or v1), else TOML, v2
 * only (nydus's own examples, misc/configs/*.toml). `what` names it in errors.
 */
export function parseConfigText(text: string, what: string): unknown {
  if (!text.trim()) throw new ConfigError(`${what} is empty`);
  try {
    return parseJsonText(text, what);
  } catch (jsonError) {
    if (jsonError instanceof ConfigError) throw jsonError;
    let config: Record<string, unknown>;
    try {
      config = parseToml(text);
    } catch (tomlError) {
      const e = tomlError as Error & { line?: number; column?: number };
      const at = e.line ? ` at line ${e.line}, column ${e.column}` : '';
      throw new ConfigError(`${what} is neither JSON (${(jsonError as Error).message}) nor TOML (${e.message.split('\n')[0]}${at})`);
    }
    if (config.version !== 2) throw new ConfigError(`${what}: a TOML config is read as version 2 only (version = 2), as nydusd reads it`);
    // (JSON has no inf or nan: they would pass on as null, read as "not given".)
    const nonFinite = (v: unknown, at: string): string | null => {
      if (typeof v === 'number') return Number.isFinite(v) ? null : at;
      if (v && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) {
          const found = nonFinite(x, Array.isArray(v) ? `${at}[${k}]` : `${at}.${k}`);
          if (found) return found;
        }
      }
      return null;
    };
    const bad = nonFinite(config, 'config');
    if (bad) throw new ConfigError(`${what}: ${bad} is not a finite number`);
    // As the JSON would have it: plain objects (the parser's have no prototype), dates as strings.
    return JSON.parse(JSON.stringify(config));
  }
}

/**
 * A `--config` with the registry credentials of IMAGE_PULL_AUTH (base64 of user:password), as nydusd
 * fills them in (ConfigV2::update_registry_auth_info): they replace the file's `auth` of a registry
 * backend, so that the file need hold none. The mount API's configs are taken as given, as nydusd's.
 */
export function withImagePullAuth(config: unknown, auth: string | undefined = process.env.IMAGE_PULL_AUTH): unknown {
  if (auth === undefined || !config || typeof config !== 'object') return config;
  const c = config as Record<string, unknown>;
  const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
  if (c.version === 2) {
    if (isObj(c.backend) && isObj(c.backend.registry)) return { ...c, backend: { ...c.backend, registry: { ...c.backend.registry, auth } } };
    return config;
  }
  if (isObj(c.device) && isObj(c.device.backend) && c.device.backend.type === 'registry') {
    const backend = c.device.backend;
    return { ...c, device: { ...c.device, backend: { ...backend, config: { ...(isObj(backend.config) ? backend.config : {}), auth } } } };
  }
  return config;
}

/** Cache types of nydusd's FUSE-mode config whose `work_dir` holds the blobs' cache files. */
const FS_CACHE_TYPES = new Set(['blobcache', 'filecache', 'fscache']);

/**
 * A fanotify mount's work_dir: its cache files are named in the file-backed mount's `device=`
 * options, which end at a comma or white space. Refused before anything is made in it.
 */
function fileBackedWorkDir(workDir: string, where: string): string {
  if (!nameableAsDevice(workDir)) throw new ConfigError(`${where} ${JSON.stringify(workDir)} holds a comma or white space, which the file-backed mount's device= options cannot name`);
  return workDir;
}

/**
 * nydusd's FUSE-mode configuration (the `--config` file, or the `config` string of
 * POST /api/v1/mount) as the BlobCacheEntry body this daemon registers: v2 (`version: 2`, `backend`,
 * `cache.<type>.work_dir`, `cache.prefetch` / `rafs.prefetch`) or v1 (`device.backend`,
 * `device.cache.config.work_dir`, `fs_prefetch`). The fanotify front end keeps each blob's cache file
 * in the work_dir, so one is required.
 */
export function entryBodyFromFsConfig(config: unknown, bootstrap: string, id: string): Json {
  const c = obj(config, 'config');
  if (c.version === 2) {
    const cache = obj(c.cache ?? {}, 'config.cache');
    const ctype = str(cache, 'type', 'config.cache', false);
    if (!FS_CACHE_TYPES.has(ctype)) throw new ConfigError(`config.cache.type must be one of ${[...FS_CACHE_TYPES].join(', ')}: the cache files need a work_dir`);
    const typed = obj(cache[ctype] ?? {}, `config.cache.${ctype}`);
    const workDir = fileBackedWorkDir(str(typed, 'work_dir', `config.cache.${ctype}`), `config.cache.${ctype}.work_dir`);
    refuseUnreadableCache(cache, 'config.cache', typed, `config.cache.${ctype}`);
    checkSwitches(cache, CACHE_SWITCHES, 'config.cache');
    if (c.rafs !== undefined) checkRafsMode(obj(c.rafs, 'config.rafs'), 'config.rafs');
    const v2Cache: Json = { type: 'fscache', fscache: { work_dir: workDir } };
    if (cache.prefetch !== undefined) v2Cache.prefetch = cache.prefetch;
    return { type: 'bootstrap', id, config_v2: { ...c, cache: v2Cache, metadata_path: bootstrap } };
  }
  if (c.version !== undefined && c.version !== 1) throw new ConfigError(`config.version ${JSON.stringify(c.version)} is not supported (1 or 2)`);
  const device = obj(c.device, 'config.device');
  const backend = obj(device.backend, 'config.device.backend');
  const cache = obj(device.cache ?? {}, 'config.device.cache');
  const ctype = str(cache, 'type', 'config.device.cache', false);
  if (!FS_CACHE_TYPES.has(ctype)) throw new ConfigError(`config.device.cache.type must be one of ${[...FS_CACHE_TYPES].join(', ')}: the cache files need a work_dir`);
  const typed = obj(cache.config ?? {}, 'config.device.cache.config');
  const workDir = fileBackedWorkDir(str(typed, 'work_dir', 'config.device.cache.config'), 'config.device.cache.config.work_dir');
  refuseUnreadableCache(cache, 'config.device.cache', typed, 'config.device.cache.config');
  checkSwitches(cache, CACHE_SWITCHES, 'config.device.cache');
  checkRafsMode(c, 'config');
  checkSwitches(c, FS_SWITCHES, 'config');
  const legacy: Json = {
    backend_type: str(backend, 'type', 'config.device.backend'), backend_config: backend.config ?? {},
    cache_type: 'fscache', cache_config: { work_dir: workDir }, metadata_path: bootstrap,
  };
  if (c.fs_prefetch !== undefined) legacy.prefetch_config = c.fs_prefetch;
  // v1's top-level `amplify_io` (nydus's RafsConfig, v2's `rafs.batch_size`): checked here, naming the
  // field as the file has it, and carried in the entry.
  if (c.amplify_io !== undefined && c.amplify_io !== null) {
    amplifyIoFrom(c, 'config', 'amplify_io');
    legacy.amplify_io = c.amplify_io;
  }
  return { type: 'bootstrap', id, config: legacy };
}
