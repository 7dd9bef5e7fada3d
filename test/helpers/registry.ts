/**
 * A real registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1, a free port,
 * storage in a temp dir, optional htpasswd (bcrypt) users, stopped by its pid.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { Agent, request } from 'undici';
import { tmpDir } from './fixtures.ts';

/** Fails (never skips) with the Debian package to install when `bin` is not on PATH. */
export function requireTool(bin: string, debianPackage: string): string {
  const r = spawnSync('sh', ['-c', `command -v "${bin}"`], { encoding: 'utf8' });
  const found = r.stdout.trim();
  if (r.status !== 0 || !found) throw new Error(`${bin} not found: install the Debian package ${debianPackage} (apt-get install -y ${debianPackage})`);
  return found;
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** An htpasswd file with bcrypt entries (the only hash distribution accepts), made by apache2-utils' htpasswd. */
export function writeHtpasswd(file: string, users: Record<string, string>): void {
  requireTool('htpasswd', 'apache2-utils');
  const lines = Object.entries(users).map(([user, pass]) => {
    const r = spawnSync('htpasswd', ['-nbB', '-C', '4', user, pass], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`htpasswd -nbB ${user}: ${r.stderr}`);
    return r.stdout.trim();
  });
  fs.writeFileSync(file, lines.join('\n') + '\n');
}

export interface RegistryOptions {
  /** user -> password: serve with htpasswd Basic auth. */
  users?: Record<string, string>;
  /** Serve https with a self-signed certificate for 127.0.0.1 (made by openssl). */
  tls?: boolean;
  /** Serve this storage directory (kept on stop) instead of a fresh one. */
  storage?: string;
  /** Serve the storage read-only (distribution's maintenance mode): pulls only, the directory may be read-only. */
  readOnly?: boolean;
  /** Listen on this port (e.g. to restart a stopped registry where its clients expect it). */
  port?: number;
}

export interface RegistryServer {
  /** `127.0.0.1:<port>`, the host part of references. */
  host: string;
  port: number;
  /** `http://127.0.0.1:<port>` (https with `tls`) */
  url: string;
  /** Temp dir holding config, storage and htpasswd. */
  dir: string;
  pid: number;
  stop(): Promise<void>;
}

/** A self-signed certificate for 127.0.0.1: returns the `http.tls` lines of the registry config. */
function selfSignedTls(dir: string): string {
  requireTool('openssl', 'openssl');
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const r = spawnSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert,
  ], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl req: ${r.stderr}`);
  return `  tls: {certificate: ${cert}, key: ${key}}`;
}

const trustAnything = new Agent({ connect: { rejectUnauthorized: false } });

async function waitReady(url: string, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited with ${child.exitCode}: ${stderr()}`);
    try {
      const res = await request(`${url}/v2/`, { dispatcher: trustAnything });
      await res.body.dump();
      if (res.statusCode === 200 || res.statusCode === 401) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`docker-registry did not answer on ${url} within 60 s: ${stderr()}`);
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const kill = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<RegistryServer> {
  const bin = requireTool('docker-registry', 'docker-registry');
  const dir = tmpDir('registry');
  const storage = opts.storage ?? path.join(dir, 'storage');
  if (!opts.storage) fs.mkdirSync(storage);
  const maintenance = opts.readOnly ? ', maintenance: {uploadpurging: {enabled: false}, readonly: {enabled: true}}' : '';
  let auth = '';
  if (opts.users) {
    const file = path.join(dir, 'htpasswd');
    writeHtpasswd(file, opts.users);
    auth = `auth:\n  htpasswd:\n    realm: nydus-ts-test\n    path: ${file}\n`;
  }
  const tls = opts.tls ? selfSignedTls(dir) : '';
  // A port picked free can be taken before the registry binds it: try a few.
  for (let attempt = 0; ; attempt++) {
    const port = opts.port ?? await freePort();
    const config = path.join(dir, 'config.yml');
    fs.writeFileSync(config, [
      'version: 0.1',
      'log: {level: error}',
      `storage: {filesystem: {rootdirectory: ${storage}}, delete: {enabled: true}${maintenance}}`,
      'http:',
      `  addr: 127.0.0.1:${port}`,
      tls,
      auth,
    ].join('\n'));
    let err = '';
    const child = spawn(bin, ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.on('data', (d) => (err = (err + d).slice(-4000)));
    const url = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
    try {
      await waitReady(url, child, () => err);
    } catch (e) {
      await stopChild(child);
      if (attempt < 2 && opts.port === undefined && /address already in use/.test(err)) continue;
      fs.rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    return {
      host: `127.0.0.1:${port}`,
      port,
      url,
      dir,
      pid: child.pid!,
      async stop() {
        await stopChild(child);
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  }
}
