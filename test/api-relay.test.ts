/**
 * The supervisor's relay of the API socket (src/daemon/api-relay.ts), against plain HTTP servers in
 * the worker's place: an idle connection (nydus-snapshotter's liveness watch) outlives the worker and
 * reaches the next one; a request waits for a worker that is starting; a relayed connection ends with
 * its worker; a client that closes having said nothing is not held. The daemon end to end (kill -9 of
 * a worker under an idle connection): test/fanotify.root-kernel.test.ts and the guest's ondemand test.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { ApiRelay, workerSocketFor } from '../src/daemon/api-relay.ts';
import { apiRequest, heldConnection } from './helpers/api-client.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-relay-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));
const log = pino({ level: 'silent' });

/** An HTTP server in a worker's place, answering its name; `stop` ends it and every connection it has (a worker's death). */
async function fakeWorker(sock: string, name: string): Promise<{ stop(): void; hold: boolean }> {
  const w = { hold: false, stop: () => {} };
  const server = http.createServer((req, res) => {
    if (w.hold) return;  // never answered: a request in flight when the worker dies
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ worker: name, url: req.url }));
  });
  await new Promise<void>((r) => server.listen(sock, r));
  w.stop = () => {
    server.close();
    server.closeAllConnections();
  };
  return w;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('API relay: an idle connection stays open while the worker dies and another starts, and its first request reaches the new worker', async () => {
  const sock = path.join(work, 'api.sock');
  const relay = await ApiRelay.listen(sock, workerSocketFor(sock), log);
  try {
    assert.equal(fs.statSync(sock).mode & 0o777, 0o600, 'only the owner may connect');
    const first = await fakeWorker(relay.workerSock, 'first');
    assert.equal((await apiRequest(sock, 'GET', '/api/v1/daemon')).body.worker, 'first');
    const watch = heldConnection(sock);
    await watch.connected;
    const busy = heldConnection(sock);
    assert.equal((await busy.request('/one')).worker, 'first', 'a connection that spoke is relayed to the worker');
    first.stop();
    await sleep(300);
    assert.equal(busy.closed, true, 'a relayed connection ends with its worker');
    assert.equal(watch.closed, false, 'the idle connection is still open with no worker');
    const second = await fakeWorker(relay.workerSock, 'second');
    await sleep(200);
    assert.equal(watch.closed, false, 'and once the next worker is up');
    assert.deepEqual(await watch.request('/api/v1/daemon'), { worker: 'second', url: '/api/v1/daemon' }, 'its first request reaches the new worker');
    watch.c.destroy();
    second.stop();
  } finally {
    relay.close();
  }
  assert.equal(fs.existsSync(sock), false, 'the socket is removed when the relay closes');
});

test('API relay: a request sent before a worker listens is answered once one does; one whose worker dies before answering ends, never hangs', async () => {
  const sock = path.join(work, 'early.sock');
  const relay = await ApiRelay.listen(sock, workerSocketFor(sock), log);
  try {
    const early = apiRequest(sock, 'GET', '/early');
    await sleep(400);
    const w = await fakeWorker(relay.workerSock, 'late');
    assert.equal((await early).body.worker, 'late');
    w.hold = true;
    const inFlight = apiRequest(sock, 'GET', '/held');
    await sleep(300);
    w.stop();
    await assert.rejects(inFlight, /socket hang up|ECONNRESET/, 'the request in flight fails when its worker dies');
  } finally {
    relay.close();
  }
});

test('API relay: connections closed having said nothing (liveness checks) are not held; a live socket at the path is refused; a path too long for a socket address gets a worker socket that fits', async () => {
  const sock = path.join(work, 'checks.sock');
  const relay = await ApiRelay.listen(sock, workerSocketFor(sock), log);
  try {
    for (let i = 0; i < 50; i++) {
      const c = net.connect(sock);
      await new Promise((r) => c.once('connect', r));
      c.end();
    }
    for (let i = 0; relay.connections > 0; i++) {
      if (i > 100) assert.fail(`${relay.connections} connections still held`);
      await sleep(20);
    }
    await assert.rejects(ApiRelay.listen(sock, workerSocketFor(sock), log), /is in use by another running daemon/);
  } finally {
    relay.close();
  }
  const deep = path.join(work, 'd'.repeat(90), 'api.sock');
  const [one, two] = [workerSocketFor(deep), workerSocketFor(deep)];
  assert.ok(Buffer.byteLength(one) <= 107, one);
  assert.notEqual(one, two, 'a directory of its own each time: no other user can take the path first');
  assert.equal(fs.statSync(path.dirname(one)).mode & 0o777, 0o700);
  for (const p of [one, two]) fs.rmSync(path.dirname(p), { recursive: true });
  assert.equal(workerSocketFor(sock), path.join(work, '.checks.sock.worker'));
});

test('API relay: a client that writes again after its worker died (reset, its request unread), then closes, is not held', async () => {
  const sock = path.join(work, 'late.sock');
  const relay = await ApiRelay.listen(sock, workerSocketFor(sock), log);
  // A worker that dies with the request unread: the relay's connection to it is reset.
  const dying = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => {
    setTimeout(() => {
      s.write('HTTP/1.1 200 OK\r\n');
      setTimeout(() => s.destroy(), 20);
    }, 100);
  });
  await new Promise<void>((r) => dying.listen(relay.workerSock, r));
  try {
    const c = net.connect(sock);
    c.on('error', () => {});
    c.on('data', () => {});
    // A keep-alive client's next request, written as the worker went, then its close.
    const closing = new Promise<void>((r) => c.once('end', () => {
      c.write('GET /next HTTP/1.1\r\nHost: nydusd\r\n\r\n');
      setTimeout(() => {
        c.end();
        r();
      }, 50);
    }));
    await new Promise((r) => c.once('connect', r));
    c.write('GET /held HTTP/1.1\r\nHost: nydusd\r\n\r\n');
    await closing;
    for (let i = 0; relay.connections > 0; i++) {
      if (i > 100) assert.fail(`${relay.connections} connection still held`);
      await sleep(20);
    }
  } finally {
    dying.close();
    relay.close();
  }
});

test('API relay: idle connections are parked with the worker (keepWith) until their client speaks or goes; a new keeper is given those idle then', async () => {
  const sock = path.join(work, 'park.sock');
  const relay = await ApiRelay.listen(sock, workerSocketFor(sock), log);
  const calls: string[] = [];
  const keeper = { park: (id: number) => calls.push(`park ${id}`), unpark: (id: number) => calls.push(`unpark ${id}`) };
  try {
    const w = await fakeWorker(relay.workerSock, 'one');
    const early = heldConnection(sock);
    await early.connected;
    await sleep(100);
    relay.keepWith(keeper);
    assert.deepEqual(calls, ['park 1'], 'a new keeper is given the connections idle now');
    const speaks = heldConnection(sock);
    const leaves = heldConnection(sock);
    await Promise.all([speaks.connected, leaves.connected]);
    await sleep(100);
    assert.deepEqual(calls, ['park 1', 'park 2', 'park 3'], 'and each new one');
    assert.equal((await speaks.request('/x')).worker, 'one');
    leaves.c.destroy();
    await sleep(100);
    assert.deepEqual(calls.slice(3).sort(), ['unpark 2', 'unpark 3'], 'dropped once the client speaks or goes');
    relay.keepWith(null);
    calls.length = 0;
    relay.keepWith(keeper);
    assert.deepEqual(calls, ['park 1'], 'the next worker is given the one still idle');
    early.c.destroy();
    speaks.c.destroy();
    w.stop();
  } finally {
    relay.close();
  }
});
