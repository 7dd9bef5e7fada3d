/**
 * The libuv handle under a Node socket or server (Node's private `_handle`), read in this one place:
 * its fd, to hand to a child process, and the handle itself, to pass over an IPC channel unread (as
 * Node's `net.Native`). Node has no public way to either.
 */
import type net from 'node:net';

/** A libuv stream handle: a socket's, a pipe's or a listening server's. Never read from here. */
export interface LibuvHandle {
  fd: number;
  close(): void;
}

/** Whether `h` is one (a handle received over an IPC channel). */
export function isLibuvHandle(h: unknown): h is LibuvHandle {
  return typeof h === 'object' && h !== null && typeof (h as LibuvHandle).fd === 'number' && typeof (h as LibuvHandle).close === 'function';
}

export function libuvHandleOf(s: net.Socket | net.Server): LibuvHandle | undefined {
  return (s as unknown as { _handle?: LibuvHandle | null })._handle ?? undefined;
}

/** The fd under `s`, or undefined when it has none (closed, or not yet open). */
export function fdOf(s: net.Socket | net.Server): number | undefined {
  const fd = libuvHandleOf(s)?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}
