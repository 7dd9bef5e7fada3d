/**
 * The bootstrap layer: a tar holding `image/` and `image/image.boot`, gzipped. Its digest names the
 * layer; the plain tar's digest is its diff_id.
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { TarWriter } from '../image/tar-writer.ts';
import { BOOTSTRAP_IN_LAYER } from './nydus-format.ts';

export interface PackedFile {
  path: string;
  digest: string;
  size: number;
}

export interface BootstrapLayer {
  /** The gzip tar, as pushed. */
  layer: PackedFile;
  /** sha256 of the plain tar: the layer's diff_id. */
  diffId: string;
}

export async function fileDigest(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(fs.createReadStream(file), hash);
  return `sha256:${hash.digest('hex')}`;
}

export async function packBootstrapLayer(bootstrap: string, workDir: string): Promise<BootstrapLayer> {
  const tarPath = path.join(workDir, 'bootstrap.tar');
  const gzPath = `${tarPath}.gz`;
  const boot = fs.readFileSync(bootstrap);
  const w = new TarWriter(tarPath);
  try {
    const base = { uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0 };
    w.add({ ...base, path: Buffer.from(path.dirname(BOOTSTRAP_IN_LAYER) + '/'), type: '5', mode: 0o755, size: 0 });
    w.add({ ...base, path: Buffer.from(BOOTSTRAP_IN_LAYER), type: '0', mode: 0o444, size: boot.length });
    w.data(boot);
    w.endFile(boot.length);
    w.close();
  } catch (e) {
    w.abort();
    throw e;
  }
  await pipeline(fs.createReadStream(tarPath), zlib.createGzip(), fs.createWriteStream(gzPath, { flags: 'wx' }));
  return {
    layer: { path: gzPath, digest: await fileDigest(gzPath), size: fs.statSync(gzPath).size },
    diffId: await fileDigest(tarPath),
  };
}
