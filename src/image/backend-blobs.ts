/**
 * The blobs of a bootstrap fetched whole from a backend into a directory (nydus-image unpack
 * --backend-type/--backend-config, as nydus-snapshotter's Unpack passes them), for the readers that
 * read blob files. Each is written under a temporary name and renamed once whole; the readers verify
 * every chunk they read against its digest, as from any blob file.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { NydusError } from '../../erofs/errors.ts';
import { type BackendConfig, ConfigError, backendFrom, obj, parseJsonText } from '../daemon/config.ts';
import { createBackend } from '../daemon/backend/index.ts';
import { newBackendMetrics } from '../daemon/backend/metrics.ts';
import { openBootstrap } from './open.ts';
import { validateImage } from './validate.ts';

/** The backend nydus-image's flags name: its type, and its config as JSON text (`--backend-config`) or a file's (`--backend-config-file`). */
export function backendFromFlags(type: string, configText: string | undefined, configFile: string | undefined): BackendConfig {
  if (configText !== undefined && configFile !== undefined) throw new ConfigError('--backend-config and --backend-config-file exclude each other');
  let text = configText;
  let what = '--backend-config';
  if (configFile !== undefined) {
    what = `--backend-config-file ${configFile}`;
    try {
      text = fs.readFileSync(configFile, 'utf8');
    } catch (e) {
      throw new ConfigError(`${what}: ${(e as Error).message}`);
    }
  }
  if (text === undefined) throw new ConfigError(`--backend-type ${type} needs --backend-config or --backend-config-file`);
  let config: unknown;
  try {
    config = parseJsonText(text, what);
  } catch (e) {
    if (e instanceof NydusError) throw e;
    throw new ConfigError(`${what} is not JSON: ${(e as Error).message}`);
  }
  return backendFrom(type, obj(config, what), what);
}

/** Fetches every blob `bootstrap` names from `backend` into `dir` (an empty directory), each as `<dir>/<blob id>`. */
export async function fetchBlobs(bootstrap: string, backend: BackendConfig, dir: string): Promise<void> {
  const image = validateImage(openBootstrap(bootstrap));
  const b = createBackend(backend, newBackendMetrics());
  const aborter = new AbortController();
  try {
    for (const blob of image.blobs) {
      const tmp = path.join(dir, `.${blob.id}.part`);
      try {
        await pipeline(Readable.from(b.stream(blob.id, 0, aborter.signal)), fs.createWriteStream(tmp, { flags: 'wx' }));
      } catch (e) {
        fs.rmSync(tmp, { force: true });
        throw e instanceof NydusError ? e : new NydusError(`blob ${blob.id} from the ${backend.type} backend: ${(e as Error).message}`);
      }
      fs.renameSync(tmp, path.join(dir, blob.id));
    }
  } finally {
    aborter.abort();
    await b.close();
  }
}
