/**
 * Idle API connections kept open across a supervisor's death.
 *
 * The supervisor's relay (api-relay.ts) holds every API connection; one whose client never spoke is
 * nydus-snapshotter's liveness watch, and its closing is the daemon's death to the snapshotter. A
 * killed supervisor closed it, while its worker served on and an adoptive supervisor took the daemon
 * over (run.ts): the snapshotter's recover policy then started a second nydusd, which found the cache
 * held. So each idle connection is parked in the worker too, a duplicate of its socket sent over the
 * IPC channel between the two processes (SCM_RIGHTS, by Node's handle passing), and dropped once the
 * client speaks or goes. A worker that starts an adoptive supervisor gives it its parked sockets as
 * inherited fds; that supervisor's relay takes them as its own idle connections and parks them again
 * in its worker.
 */
import type { ChildProcess } from 'node:child_process';
import type net from 'node:net';
import { type LibuvHandle, isLibuvHandle, libuvHandleOf } from './libuv-handle.ts';

/** What the relay tells about its idle connections: the process that holds them too (the worker). */
export interface ConnectionKeeper {
  park(id: number, client: net.Socket): void;
  unpark(id: number): void;
}

type ParkMessage = { nydusdPark: number } | { nydusdUnpark: number };

/** What a worker sends its supervisor once it may be given parked connections (run.ts, readyForParkedConnections). */
export const PARK_READY = { nydusdParkReady: true } as const;

export function isParkReady(m: unknown): boolean {
  return typeof m === 'object' && m !== null && (m as { nydusdParkReady?: unknown }).nydusdParkReady === true;
}

/** An IPC channel's end: a ChildProcess (the supervisor's worker), or `process` (an adoptive supervisor's, to the worker that started it). */
type Channel = Pick<ChildProcess, 'send' | 'connected'>;

/**
 * The keeper at the other end of `channel`. A channel already closed (its process died) drops
 * what is sent: the relay is told of the next worker (ApiRelay.keepWith) and parks everything again.
 */
export function ipcKeeper(channel: Channel): ConnectionKeeper {
  const send = (m: ParkMessage, handle?: unknown) => {
    if (!channel.connected) return;
    try {
      // keepOpen: the relay's socket stays open here; the handle is sent as it is (a libuv stream,
      // Node's `net.Native`), which the receiver holds without reading from it.
      channel.send(m, handle as net.Socket | undefined, { keepOpen: true }, () => { /* a closed channel: dropped */ });
    } catch { /* closed meanwhile */ }
  };
  return {
    park: (id, client) => {
      const handle = libuvHandleOf(client);
      if (handle) send({ nydusdPark: id }, handle);
    },
    unpark: (id) => send({ nydusdUnpark: id }),
  };
}

/** The worker's side: the idle connections its supervisor parked here, held unread. */
export class ParkedConnections {
  private readonly held = new Map<number, LibuvHandle>();

  /** Takes what arrives on `channel` (the worker's own `process`, or the adoptive supervisor it started). */
  listen(channel: Pick<NodeJS.EventEmitter, 'on'>): void {
    channel.on('message', (m: unknown, handle?: unknown) => {
      if (typeof m !== 'object' || m === null) return;
      if ('nydusdPark' in m && typeof m.nydusdPark === 'number' && isLibuvHandle(handle)) {
        this.held.get(m.nydusdPark)?.close();
        this.held.set(m.nydusdPark, handle);
      } else if ('nydusdUnpark' in m && typeof m.nydusdUnpark === 'number') {
        this.held.get(m.nydusdUnpark)?.close();
        this.held.delete(m.nydusdUnpark);
      }
    });
  }

  /** The fds of the parked sockets, for a new supervisor to inherit. */
  fds(): number[] {
    return [...this.held.values()].map((h) => h.fd).filter((fd) => fd >= 0);
  }

  /** Closes them all: a new supervisor has its own copies, and parks them here again. */
  clear(): void {
    for (const h of this.held.values()) h.close();
    this.held.clear();
  }
}
