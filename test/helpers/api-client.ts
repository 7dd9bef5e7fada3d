/** A minimal client of nydusd's HTTP API on its unix socket (no keep-alive: each call is one connection). */
import http from 'node:http';
import net from 'node:net';

export interface ApiResponse {
  status: number;
  body: any;
}

/** How long a call waits for its whole answer: a daemon that accepted and never answers fails the test, not hangs it. */
const API_ANSWER_MS = 60_000;

export function apiRequest(sock: string, method: string, url: string, body?: unknown): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: sock, method, path: url, agent: false, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode!, body: text ? JSON.parse(text) : null }));
      res.on('error', reject);
    });
    req.setTimeout(API_ANSWER_MS, () => req.destroy(new Error(`${method} ${url} on ${sock}: no answer within ${API_ANSWER_MS / 1000} s`)));
    req.on('error', reject);
    if (body !== undefined) req.write(typeof body === 'string' ? body : JSON.stringify(body));
    req.end();
  });
}

/**
 * One raw HTTP request (`text`, written as it is) on a connection of its own: resolves to what came
 * back, or 'no answer' when nothing did within 5 s.
 */
export function rawHttp(sock: string, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(sock, () => c.write(text));
    let got = '';
    c.setEncoding('utf8');
    c.on('data', (d) => (got += d));
    c.on('end', () => resolve(got));
    c.on('error', reject);
    c.setTimeout(5000, () => {
      c.destroy();
      resolve(got || 'no answer');
    });
  });
}

/** A BlobCacheEntry as nydus-snapshotter PUTs it to /api/v2/blobs: a localfs backend, fscache, `extra` in config_v2. */
export function blobCacheEntry(id: string, image: { bootstrap: string; blobDir: string; workDir: string }, extra: object = {}) {
  return {
    type: 'bootstrap', id, domain_id: '',
    config_v2: {
      version: 2, id, backend: { type: 'localfs', localfs: { dir: image.blobDir } },
      cache: { type: 'fscache', fscache: { work_dir: image.workDir } }, metadata_path: image.bootstrap, ...extra,
    },
  };
}
