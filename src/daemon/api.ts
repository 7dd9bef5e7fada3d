/**
 * The HTTP API on a unix socket, with Nydus's paths and bodies:
 *   GET /api/v1/daemon, PUT|GET|DELETE /api/v2/blobs, GET /api/v1/metrics/backend, GET /api/v1/metrics/blobcache.
 * Errors are JSON {code, message} with a 4xx status for bad requests.
 */
import http from 'node:http';
import fs from 'node:fs';
import net from 'node:net';
import type { Logger } from 'pino';
import { NydusError } from '../../erofs/errors.ts';
import { ConfigError } from './config.ts';
import type { ImageRegistry } from './daemon.ts';
import type { DaemonState } from './state.ts';
import type { OnDemandSession } from './ondemand.ts';

export interface ApiContext {
  id: string;
  registry: ImageRegistry;
  state: DaemonState;
  session: () => OnDemandSession | null;
  log: Logger;
}

const MAX_BODY = 1 << 20;

function send(res: http.ServerResponse, status: number, body?: unknown): void {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

async function readBody(req: http.IncomingMessage): Promise<unknown> {
  let size = 0;
  const parts: Buffer[] = [];
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new ConfigError('request body is too large');
    parts.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8'));
  } catch (e) {
    throw new ConfigError(`request body is not valid JSON: ${(e as Error).message}`);
  }
}

export function startApi(sock: string, ctx: ApiContext): Promise<http.Server> {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://nydusd');
    const route = `${req.method} ${url.pathname}`;
    try {
      switch (route) {
        case 'GET /api/v1/daemon': {
          const s = ctx.session();
          return send(res, 200, {
            id: ctx.id,
            version: { package_ver: '0.1.0', git_commit: '', build_time: '', profile: 'release', rustc: 'nydus-ts' },
            supervisor: null,
            state: 'RUNNING',
            pid: process.pid,
            backend_collection: Object.fromEntries(ctx.registry.list().map((e) => [e.id, { backend_type: e.backend.type }])),
            ondemand: s ? s.stats : null,
          });
        }
        case 'PUT /api/v2/blobs': {
          ctx.registry.add(await readBody(req));
          return send(res, 204);
        }
        case 'GET /api/v2/blobs':
          return send(res, 200, ctx.registry.list());
        case 'DELETE /api/v2/blobs': {
          const id = url.searchParams.get('blob_id') ?? url.searchParams.get('id') ?? undefined;
          const domainId = url.searchParams.get('domain_id') ?? undefined;
          if (!id && !domainId) throw new ConfigError('DELETE /api/v2/blobs needs blob_id or domain_id');
          const n = await ctx.registry.remove({ id, domainId });
          if (n === 0) return send(res, 404, { code: 'NotFound', message: `no image matches ${url.search}` });
          return send(res, 204);
        }
        case 'GET /api/v1/metrics/backend': {
          const total = { read_count: 0, read_amount_total: 0, read_errors: 0 };
          for (const m of Object.values(ctx.registry.metrics())) {
            total.read_count += m.read_count;
            total.read_amount_total += m.read_amount_total;
            total.read_errors += m.read_errors;
          }
          return send(res, 200, total);
        }
        case 'GET /api/v1/metrics/blobcache': {
          const blob = url.searchParams.get('blob_id') ?? url.searchParams.get('id');
          if (!blob) throw new ConfigError('GET /api/v1/metrics/blobcache needs blob_id');
          // The blob's cache files (one per volume that opened it): what each holds, and their union.
          const files = ctx.state.cacheFilesOf(blob).map(({ volume }) => {
            const cached = [...ctx.state.cached({ volume, cookie: blob })].sort((a, b) => a - b);
            return { volume, cached_chunks: cached.length, cached };
          });
          const union = [...new Set(files.flatMap((f) => f.cached))].sort((a, b) => a - b);
          return send(res, 200, { blob_id: blob, cached_chunks: union.length, cached: union, cache_files: files, fetches: ctx.state.fetches(blob) });
        }
        default:
          return send(res, 404, { code: 'NotFound', message: `no API at ${route}` });
      }
    } catch (e) {
      const err = e as Error;
      const status = err instanceof ConfigError ? 400 : err instanceof NydusError ? 422 : 500;
      ctx.log.warn({ route, err: err.message }, 'API request failed');
      return send(res, status, { code: err.name, message: err.message });
    }
  });
  return removeStaleSocket(sock).then(() => new Promise((resolve, reject) => {
    server.once('error', reject);
    const old = process.umask(0o177);
    server.listen(sock, () => {
      process.umask(old);
      fs.chmodSync(sock, 0o600);
      resolve(server);
    });
  }));
}

/**
 * A socket left behind by a daemon that died is removed; anything else at that path (a file, a
 * directory, a socket another daemon still answers on) is refused, never deleted.
 */
async function removeStaleSocket(sock: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(sock);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new NydusError(`--apisock ${sock} exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new NydusError(`--apisock ${sock} is in use by another running daemon`);
  fs.rmSync(sock);
}
