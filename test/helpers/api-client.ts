/** A minimal client of nydusd's HTTP API on its unix socket (no keep-alive: each call is one connection). */
import http from 'node:http';

export interface ApiResponse {
  status: number;
  body: any;
}

export function apiRequest(sock: string, method: string, url: string, body?: unknown): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: sock, method, path: url, agent: false, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode!, body: text ? JSON.parse(text) : null }));
    });
    req.on('error', reject);
    if (body !== undefined) req.write(typeof body === 'string' ? body : JSON.stringify(body));
    req.end();
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
