/**
 * undici, loaded on first use: it is the largest module a command loads (about a third of nydusd's
 * start), and only registry and HTTP backends need it; a daemon on local blobs never loads it.
 */
import { createRequire } from 'node:module';
import type * as Undici from 'undici';

let loaded: typeof Undici | null = null;

export function undici(): typeof Undici {
  loaded ??= createRequire(import.meta.url)('undici') as typeof Undici;
  return loaded;
}
