/**
 * The API socket as the supervisor holds it (run.ts): connections are accepted here and relayed to the
 * worker's own socket, so that a worker's death does not close them.
 *
 * Why: nydus-snapshotter watches a daemon's life through an idle connection to its API socket (its
 * liveness monitor waits for EPOLLHUP on a connection it never writes to). When that connection closes,
 * its default recover_policy "restart" waits for the pid it started to exit, then unmounts the
 * daemon's images and starts another. Held by the worker, the connection closed with each worker
 * death, while the pid the snapshotter started, this supervisor, serves on: the snapshotter waited for
 * good, holding the daemon's lock. Here a connection is tied to a worker only once its client sends
 * something: one that never does (the watch) stays open across worker restarts, and closes when the
 * daemon ends. A relayed connection ends with its worker, as it did: a request in flight fails, and
 * the client's next connection reaches the next worker. An idle connection is also parked in the
 * worker (parked-connections.ts), so that it outlives this supervisor's death too.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import type { ConnectionKeeper } from './parked-connections.ts';
import { API_MAX_CONNECTIONS, listenOwnerOnly } from './unix-socket.ts';
import { fdOf } from './libuv-handle.ts';

/**
 * How long a client's first bytes wait for a worker to answer on its socket (one starting, or
 * replacing one that died): less than nydus-snapshotter's 30 s request timeout, so that a request its
 * client gave up on is not run afterwards.
 */
const WORKER_WAIT_MS = 20_000;
const WORKER_RETRY_MS = 50;
/** sun_path holds 108 bytes with its NUL. */
const SUN_PATH_MAX = 107;

/**
 * Where the worker of the daemon whose API socket is `apiSock` serves the API: beside it (only the
 * owner may connect to either), or, when that path would not fit a socket address, in a directory of
 * its own (0700, a new name each time: no other user can put anything at the path first) under the
 * temporary directory. The path reaches the workers, and an adoptive supervisor, in their environment.
 */
export function workerSocketFor(apiSock: string): string {
  const abs = path.resolve(apiSock);
  const beside = path.join(path.dirname(abs), `.${path.basename(abs)}.worker`);
  if (Buffer.byteLength(beside) <= SUN_PATH_MAX) return beside;
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'nydusd-')), 'api.worker');
}

export class ApiRelay {
  private readonly clients = new Set<net.Socket>();
  /** Connections whose client has said nothing yet, by the id they are parked under. */
  private readonly idle = new Map<net.Socket, number>();
  private nextId = 1;
  private keeper: ConnectionKeeper | null = null;
  private closed = false;
  /** The socket paths are this daemon's, to remove as it ends (leavePaths). */
  private ownsPaths = true;

  private constructor(private readonly server: net.Server, readonly sock: string, readonly workerSock: string, private readonly log: Logger) {
    server.maxConnections = API_MAX_CONNECTIONS;
    server.on('connection', (c) => this.accept(c));
    server.on('error', (e) => log.error({ err: e.message, apisock: sock }, 'the API socket failed'));
  }

  /** Listens at `sock` (a dead daemon's socket there replaced; a live one's refused), relaying to `workerSock`. */
  static async listen(sock: string, workerSock: string, log: Logger): Promise<ApiRelay> {
    const server = await listenOwnerOnly(net.createServer({ allowHalfOpen: true, pauseOnConnect: false }), sock);
    return new ApiRelay(server, sock, workerSock, log);
  }

  /**
   * The listening socket `fd` (inherited from the worker by an adoptive supervisor), at `sock`, and
   * the idle connections the worker held for it (`parked`, fds inherited too).
   */
  static async adopt(fd: number, sock: string, workerSock: string, log: Logger, parked: readonly number[] = []): Promise<ApiRelay> {
    const server = net.createServer({ allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const relay = new ApiRelay(server, sock, workerSock, log);
    for (const p of parked) {
      try {
        relay.accept(new net.Socket({ fd: p, readable: true, writable: true, allowHalfOpen: true }));
      } catch (e) {
        log.warn({ err: (e as Error).message, fd: p }, 'an idle API connection the worker held is lost');
      }
    }
    return relay;
  }

  /**
   * The process that parks the idle connections from now on (the worker just started; null while
   * there is none): it is given every idle connection held now, and then each new one.
   */
  keepWith(keeper: ConnectionKeeper | null): void {
    this.keeper = keeper;
    if (keeper) for (const [c, id] of this.idle) keeper.park(id, c);
  }

  /** The listening socket's fd: each worker holds a copy, for the supervisor that adopts it if this one dies. */
  get fd(): number {
    const fd = fdOf(this.server);
    if (fd === undefined) throw new Error(`the API socket ${this.sock} has no fd`);
    return fd;
  }

  /** Connections held now (relayed or not). */
  get connections(): number {
    return this.clients.size;
  }

  /**
   * What is at the socket paths now is not this daemon's (its socket was removed, perhaps replaced by
   * another daemon's, which uses the same worker path): close() leaves them as they are.
   */
  leavePaths(): void {
    this.ownsPaths = false;
  }

  /** The daemon ends: no more connections, every one closed, the socket files removed (synchronously: the process exits next). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.server.close();
    for (const c of this.clients) c.destroy();
    this.clients.clear();
    if (!this.ownsPaths) return;
    // Removed by name, as the worker removed it before: a server listening on an inherited fd (an
    // adoptive supervisor's) does not remove it itself.
    fs.rmSync(this.sock, { force: true });
    // A worker that died left its socket behind; none runs now. Its own directory too, when it has one.
    fs.rmSync(this.workerSock, { force: true });
    const dir = path.dirname(this.workerSock);
    if (path.basename(this.workerSock) === 'api.worker' && path.dirname(dir) === os.tmpdir() && path.basename(dir).startsWith('nydusd-')) fs.rmSync(dir, { recursive: true, force: true });
  }

  private accept(client: net.Socket): void {
    if (this.closed) {
      client.destroy();
      return;
    }
    this.clients.add(client);
    const id = this.nextId++;
    this.idle.set(client, id);
    this.keeper?.park(id, client);
    const unpark = () => {
      if (this.idle.delete(client)) this.keeper?.unpark(id);
    };
    client.on('close', () => {
      this.clients.delete(client);
      unpark();
    });
    client.on('error', () => client.destroy());
    let spoke = false;
    // Closed by a client that said nothing (a liveness check): half-open sockets would pile up here.
    client.once('end', () => {
      if (!spoke) client.destroy();
    });
    client.once('data', (first: Buffer) => {
      spoke = true;
      unpark();
      client.pause();
      this.toWorker(client, first, Date.now() + WORKER_WAIT_MS);
    });
  }

  /** The client's bytes (`first`, then the rest) to a new connection to the worker, and the worker's back. */
  private toWorker(client: net.Socket, first: Buffer, deadline: number): void {
    if (this.closed || client.destroyed) return;
    const worker = net.connect({ path: this.workerSock, allowHalfOpen: true });
    let connected = false;
    // A client gone meanwhile takes its worker connection with it, connected or not.
    const drop = () => worker.destroy();
    client.once('close', drop);
    worker.on('error', (e: NodeJS.ErrnoException) => {
      worker.destroy();
      if (connected) return;  // its 'close' ends the client's connection
      client.off('close', drop);
      // No worker listens yet (starting, or replacing one that died): its socket comes soon.
      if (Date.now() < deadline && ['ENOENT', 'ECONNREFUSED', 'EAGAIN'].includes(e.code ?? '')) {
        setTimeout(() => this.toWorker(client, first, deadline), WORKER_RETRY_MS);
        return;
      }
      this.log.error({ err: e.message, worker: this.workerSock }, 'an API request reached no worker; its connection is closed');
      client.destroy();
    });
    worker.once('connect', () => {
      connected = true;
      worker.write(first);
      client.pipe(worker);
      worker.pipe(client);
      // The worker is gone (it answered and closed, or died): what it wrote is delivered, then the
      // client's connection ends. Unpiped, the client is paused: what it sends after is drained, so
      // that its own end is seen and the socket goes (else it stayed, half-open, for good).
      worker.once('close', () => {
        client.end();
        client.resume();
      });
    });
  }
}
