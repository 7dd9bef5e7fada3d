/**
 * nydusd configuration as Nydus users write it: the BlobCacheEntry that nydus-snapshotter PUTs to
 * /api/v2/blobs in fscache mode, with either the legacy `config` or `config_v2`
 * (nydus api/src/config.rs). Parsed into one typed shape; bad input is a ConfigError naming the field.
 */
import { NydusError, EINVAL } from '../../erofs/errors.ts';

export class ConfigError extends NydusError {
  constructor(message: string) {
    super(message, EINVAL);
    this.name = 'ConfigError';
  }
}

export interface BackendConfig {
  type: 'localfs';
  /** localfs: directory holding blobs named by their ids. */
  dir: string;
}

export interface ImageEntry {
  /** The fsid the kernel mounts with (`-o fsid=<id>`). */
  id: string;
  /** Blobs are shared between images of one domain (`-o domain_id=<d>`). */
  domainId: string;
  /** The bootstrap file. */
  metadataPath: string;
  backend: BackendConfig;
  prefetch: boolean;
  /** The cache's work dir as the entry states it (`cache.fscache.work_dir`); empty when not given. */
  workDir: string;
}

type Json = Record<string, unknown>;

function obj(v: unknown, where: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(`${where} must be a JSON object`);
  return v as Json;
}

function str(o: Json, key: string, where: string, required = true): string {
  const v = o[key];
  if (v === undefined || v === null || v === '') {
    if (required) throw new ConfigError(`${where}.${key} is required`);
    return '';
  }
  if (typeof v !== 'string') throw new ConfigError(`${where}.${key} must be a string`);
  return v;
}

function backendFrom(type: string, cfg: Json, where: string): BackendConfig {
  if (type === 'localfs') {
    const dir = str(cfg, 'dir', where, false);
    if (!dir) throw new ConfigError(`${where}.dir is required for the localfs backend`);
    return { type: 'localfs', dir };
  }
  throw new ConfigError(`backend type ${JSON.stringify(type)} is not supported yet (supported: localfs)`);
}

function checkFscache(type: string, where: string): void {
  if (type && type !== 'fscache') throw new ConfigError(`${where} is ${JSON.stringify(type)}; this daemon serves the fscache cache type`);
}

/** Parses a BlobCacheEntry body (the whole JSON of PUT /api/v2/blobs). */
export function parseBlobCacheEntry(body: unknown): ImageEntry {
  const e = obj(body, 'body');
  const type = str(e, 'type', 'body');
  if (type !== 'bootstrap') throw new ConfigError(`body.type ${JSON.stringify(type)} is not supported (supported: bootstrap)`);
  const id = str(e, 'id', 'body');
  if (/[,\s/]/.test(id)) throw new ConfigError(`body.id ${JSON.stringify(id)} must not contain commas, slashes or spaces`);
  const domainId = str(e, 'domain_id', 'body', false);
  if (/[,\s/]/.test(domainId)) throw new ConfigError(`body.domain_id ${JSON.stringify(domainId)} must not contain commas, slashes or spaces`);
  if (e.config_v2 !== undefined) {
    const c = obj(e.config_v2, 'config_v2');
    const backend = obj(c.backend, 'config_v2.backend');
    const btype = str(backend, 'type', 'config_v2.backend');
    const bcfg = obj(backend[btype] ?? {}, `config_v2.backend.${btype}`);
    const cache = c.cache === undefined ? {} : obj(c.cache, 'config_v2.cache');
    checkFscache(typeof cache.type === 'string' ? cache.type : '', 'config_v2.cache.type');
    const fscache = cache.fscache === undefined ? {} : obj(cache.fscache, 'config_v2.cache.fscache');
    const rafs = c.rafs === undefined ? {} : obj(c.rafs, 'config_v2.rafs');
    const prefetch = rafs.prefetch === undefined ? {} : obj(rafs.prefetch, 'config_v2.rafs.prefetch');
    return {
      id, domainId,
      metadataPath: str(c, 'metadata_path', 'config_v2'),
      backend: backendFrom(btype, bcfg, `config_v2.backend.${btype}`),
      prefetch: prefetch.enable === true,
      workDir: str(fscache, 'work_dir', 'config_v2.cache.fscache', false),
    };
  }
  if (e.config !== undefined) {
    const c = obj(e.config, 'config');
    checkFscache(str(c, 'cache_type', 'config', false), 'config.cache_type');
    const btype = str(c, 'backend_type', 'config');
    const prefetch = c.prefetch_config === undefined ? {} : obj(c.prefetch_config, 'config.prefetch_config');
    const cacheConfig = c.cache_config === undefined ? {} : obj(c.cache_config, 'config.cache_config');
    return {
      id, domainId,
      metadataPath: str(c, 'metadata_path', 'config'),
      backend: backendFrom(btype, obj(c.backend_config ?? {}, 'config.backend_config'), 'config.backend_config'),
      prefetch: prefetch.enable === true,
      workDir: str(cacheConfig, 'work_dir', 'config.cache_config', false),
    };
  }
  throw new ConfigError('body needs either config_v2 or config');
}
