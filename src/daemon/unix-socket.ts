/**
 * The API's unix socket: what is at its path, a stale one replaced, a server listening on it for its
 * owner alone. Shared by the API itself (api.ts) and the supervisor's relay in front of it (api-relay.ts).
 */
import fs from 'node:fs';
import net from 'node:net';
import { NydusError } from '../../erofs/errors.ts';

/**
 * Connections served at once. Each costs an fd, and the fds a worker needs for the kernel (event
 * fds, cache files) come from the same table: without a bound, idle connections alone could take them
 * all and fanotify reads would fail. The snapshotter keeps one, nydusctl one per call.
 */
export const API_MAX_CONNECTIONS = 256;

/** What is at a socket path: nothing, something else, a socket a process answers on, or a dead one's. */
export async function socketLiveness(sock: string): Promise<'absent' | 'other' | 'live' | 'dead'> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(sock);
  } catch {
    return 'absent';
  }
  if (!st.isSocket()) return 'other';
  return new Promise((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => {
      c.destroy();
      resolve('live');
    });
    c.once('error', () => resolve('dead'));
  });
}

/**
 * A socket left behind by a daemon that died is removed; anything else at that path (a file, a
 * directory, a socket another daemon still answers on) is refused, never deleted.
 */
async function removeStaleSocket(sock: string): Promise<void> {
  const state = await socketLiveness(sock);
  if (state === 'absent') return;
  if (state === 'other') throw new NydusError(`--apisock ${sock} exists and is not a socket; refusing to replace it`);
  if (state === 'live') throw new NydusError(`--apisock ${sock} is in use by another running daemon`);
  fs.rmSync(sock);
}

/** `server` listening at `sock` (a dead daemon's socket there replaced), which only its owner may connect to. */
export async function listenOwnerOnly<T extends net.Server>(server: T, sock: string): Promise<T> {
  await removeStaleSocket(sock);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    // Made 0600 from the start: no window in which another user could connect.
    const old = process.umask(0o177);
    server.listen(sock, () => {
      process.umask(old);
      server.off('error', reject);
      fs.chmodSync(sock, 0o600);
      resolve(server);
    });
  });
}
