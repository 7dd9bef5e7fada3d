/**
 * Registry credentials: explicit ones, else docker's `config.json` (`$DOCKER_CONFIG/config.json`,
 * default `~/.docker/config.json`), `auths.<host>.auth` = base64 `user:pass` (or `username`/`password`).
 * Credential helpers (`credsStore`, `credHelpers`) are not run.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NydusError, EINVAL } from '../../erofs/errors.ts';

export interface Credentials {
  username: string;
  password: string;
}

export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.DOCKER_CONFIG || path.join(env.HOME || os.homedir(), '.docker');
  return path.join(dir, 'config.json');
}

interface DockerAuthEntry {
  auth?: string;
  username?: string;
  password?: string;
}

/** Keys docker writes for a host: the bare host, with a scheme, and Docker Hub's legacy index URL. */
function keysFor(registry: string): string[] {
  const keys = [registry, `https://${registry}`, `http://${registry}`, `https://${registry}/v1/`, `https://${registry}/v2/`];
  if (registry === 'docker.io' || registry === 'index.docker.io' || registry === 'registry-1.docker.io') {
    keys.push('https://index.docker.io/v1/', 'index.docker.io', 'docker.io', 'registry-1.docker.io');
  }
  return keys;
}

/**
 * Decodes a docker `auth` string (base64 of `user:password`), the form nydusd's registry backend
 * config and nydusify's `DefaultRemoteWithAuth` take too. `where` names its origin in errors.
 */
export function credentialsFromAuth(auth: string, where = 'auth'): Credentials {
  const decoded = Buffer.from(auth.trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) throw new NydusError(`${where} is not base64 of user:password`, EINVAL);
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function decodeEntry(file: string, key: string, entry: DockerAuthEntry): Credentials | undefined {
  if (entry.auth) return credentialsFromAuth(entry.auth, `${file}: auths["${key}"].auth`);
  if (entry.username !== undefined && entry.password !== undefined) return { username: entry.username, password: entry.password };
  return undefined;
}

/** Credentials for `registry` (host[:port] as in the reference) from docker's config file, if any. */
export function dockerConfigCredentials(registry: string, env: NodeJS.ProcessEnv = process.env): Credentials | undefined {
  const file = dockerConfigPath(env);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new NydusError(`${file}: ${(e as Error).message}`, EINVAL);
  }
  let config: { auths?: Record<string, DockerAuthEntry> };
  try {
    config = JSON.parse(text);
  } catch (e) {
    throw new NydusError(`${file}: not valid JSON: ${(e as Error).message}`, EINVAL);
  }
  const auths = config.auths ?? {};
  for (const key of keysFor(registry)) {
    const entry = auths[key];
    if (entry) {
      const creds = decodeEntry(file, key, entry);
      if (creds) return creds;
    }
  }
  return undefined;
}
