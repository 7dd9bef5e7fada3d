/**
 * The fscache addon on any host (no cachefiles needed): loading, errors that keep their errno, the
 * decoder fed with hand-made messages through a FIFO, and aligned writes to an O_DIRECT file.
 * Run: node --import tsx --test native/fscache/test/addon.test.ts
 * The real kernel path is covered by guest-smoke.sh (through kernel-test/vm.sh).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CachefilesDevice, fscacheBinding, isSystemError, type CachefilesMessage } from '../index.ts';

import { TestSupervisor } from '../../../test/helpers/supervisor.ts';

const binding = fscacheBinding();

// Hand-made messages, laid out as include/uapi/linux/cachefiles.h (the only place besides the
// addon that spells them out, to feed the decoder).
function header(msgId: number, opcode: number, len: number, objectId: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(msgId, 0);
  b.writeUInt32LE(opcode, 4);
  b.writeUInt32LE(len, 8);
  b.writeUInt32LE(objectId, 12);
  return b;
}
function openMsg(msgId: number, objectId: number, volumeKey: string, cookieKey: Buffer, fd: number): Buffer {
  const vk = Buffer.from(volumeKey + '\0', 'latin1');
  const p = Buffer.alloc(16);
  p.writeUInt32LE(vk.length, 0);
  p.writeUInt32LE(cookieKey.length, 4);
  p.writeUInt32LE(fd, 8);
  p.writeUInt32LE(0, 12);
  const len = 32 + vk.length + cookieKey.length;
  return Buffer.concat([header(msgId, 0, len, objectId), p, vk, cookieKey]);
}
function readMsg(msgId: number, objectId: number, off: bigint, len: bigint): Buffer {
  const p = Buffer.alloc(16);
  p.writeBigUInt64LE(off, 0);
  p.writeBigUInt64LE(len, 8);
  return Buffer.concat([header(msgId, 2, 32, objectId), p]);
}

function withFifo(fn: (fd: number) => Promise<void> | void): Promise<void> | void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-test-'));
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const done = () => {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true });
  };
  try {
    const r = fn(fd);
    if (r instanceof Promise) return r.finally(done);
  } catch (err) {
    done();
    throw err;
  }
  done();
}

test('a missing device is a clear ENOENT that keeps errno, code, syscall and path', () => {
  assert.throws(() => CachefilesDevice.open('/tmp', 'test', { device: '/nonexistent/cachefiles' }), (err: unknown) => {
    assert.ok(isSystemError(err));
    assert.equal(err.errno, 2);
    assert.equal(err.code, 'ENOENT');
    assert.equal(err.syscall, 'open');
    assert.equal(err.path, '/nonexistent/cachefiles');
    assert.match(err.message, /^ENOENT: no such file or directory, open '\/nonexistent\/cachefiles': the kernel has no cachefiles/);
    return true;
  });
});

test('decodes OPEN, READ and CLOSE; nothing pending is null', () =>
  withFifo((fd) => {
    const spareFd = fs.openSync('/dev/null', 'r');
    try {
      fs.writeSync(fd, openMsg(7, 3, 'erofs,fs1', Buffer.from('blob\xff1', 'latin1'), spareFd));
      assert.deepEqual(binding.readMessage(fd), {
        type: 'open', msgId: 7, objectId: 3, volumeKey: 'erofs,fs1', cookieKey: 'blob\xff1', fd: spareFd, flags: 0,
      });
    } finally {
      fs.closeSync(spareFd);
    }
    fs.writeSync(fd, readMsg(8, 3, 0x1_2345_6000n, 0x20000n));
    assert.deepEqual(binding.readMessage(fd), { type: 'read', msgId: 8, objectId: 3, offset: 0x1_2345_6000, len: 0x20000 });
    fs.writeSync(fd, header(9, 1, 16, 3));
    assert.deepEqual(binding.readMessage(fd), { type: 'close', msgId: 9, objectId: 3 });
    assert.equal(binding.readMessage(fd), null);
  }));

test('an undecodable message is EPROTO naming the request', () =>
  withFifo((fd) => {
    fs.writeSync(fd, header(5, 9, 16, 2));
    assert.throws(() => binding.readMessage(fd), (err: unknown) => {
      assert.ok(isSystemError(err));
      assert.equal(err.code, 'EPROTO');
      assert.equal(err.msgId, 5);
      assert.equal(err.objectId, 2);
      assert.match(err.message, /unknown opcode 9/);
      return true;
    });
    fs.writeSync(fd, readMsg(6, 2, 1n << 60n, 4096n));
    assert.throws(() => binding.readMessage(fd), /READ range beyond 2\^53/);
  }));

test('the watcher delivers messages on the event loop and stops', () =>
  withFifo(async (fd) => {
    const got: CachefilesMessage[] = [];
    let wake: () => void = () => {};
    const watcher = new binding.Watcher(fd, (err, msg) => {
      assert.equal(err, null);
      got.push(msg!);
      wake();
    });
    try {
      for (let i = 0; i < 3; i++) {
        const arrived = new Promise<void>((resolve) => (wake = resolve));
        fs.writeSync(fd, readMsg(i, 1, BigInt(i * 4096), 4096n));
        await arrived;
      }
    } finally {
      watcher.stop();
      watcher.stop();
    }
    assert.deepEqual(got.map((m) => m.msgId), [0, 1, 2]);
  }));

test('a throwing handler is an uncaught exception of the process', () => {
  // In a child: the test runner would take the uncaught exception for its own failure.
  const script = `
    const fs = require('node:fs');
    const b = require(${JSON.stringify(path.resolve(import.meta.dirname, '../../../build/Release/fscache.node'))});
    const fd = fs.openSync(process.argv[1], fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    process.on('uncaughtException', (err) => { console.log('uncaught:', err.message); process.exit(0); });
    new b.Watcher(fd, () => { throw new Error('handler failed'); });
    fs.writeSync(fd, Buffer.from(process.argv[2], 'hex'));`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-test-'));
  try {
    execFileSync('mkfifo', [path.join(dir, 'fifo')]);
    const out = execFileSync(process.execPath, ['-e', script, path.join(dir, 'fifo'), header(1, 1, 16, 1).toString('hex')], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    assert.equal(out, 'uncaught: handler failed\n');
  } finally {
    fs.rmSync(dir, { recursive: true });
  }
});

function directFile(): { fd: number; file: string; dir: string } | null {
  // tmpfs has no O_DIRECT on older kernels: use a disk-backed directory when we can.
  for (const base of ['/var/tmp', os.tmpdir()]) {
    try {
      const dir = fs.mkdtempSync(path.join(base, 'fscache-dio-'));
      const file = path.join(dir, 'cache');
      const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_DIRECT);
      return { fd, file, dir };
    } catch {
      continue;
    }
  }
  return null;
}

test('writeAligned writes any buffer at a 4096 multiple into an O_DIRECT file, zero padded', async () => {
  const f = directFile();
  // The cache files of cachefiles are O_DIRECT; a machine where no file can be is no place to test this.
  assert.ok(f, 'no filesystem with O_DIRECT in /var/tmp or the temp dir');
  try {
    const data = Buffer.from('x'.repeat(5000));
    // Memory off a 512-byte boundary is what O_DIRECT refuses (a Buffer's own start may happen to be
    // aligned: an odd byte of one never is).
    assert.throws(() => fs.writeSync(f.fd, Buffer.alloc(8192).subarray(1, 4097), 0, 4096, 0), { code: 'EINVAL' });
    await binding.writeAligned(f.fd, data.subarray(1), 8192); // an odd start in memory too
    const back = fs.readFileSync(f.file);
    assert.equal(back.length, 8192 + 8192);
    assert.ok(back.subarray(8192, 8192 + 4999).equals(data.subarray(1)));
    assert.ok(back.subarray(8192 + 4999).every((b) => b === 0));
    await binding.writeAligned(f.fd, new Uint8Array(0), 0);

    const writes = [];
    for (let i = 0; i < 16; i++) writes.push(binding.writeAligned(f.fd, Buffer.alloc(256 * 1024 + 100, i + 1), i * 512 * 1024));
    await Promise.all(writes);
    const all = fs.readFileSync(f.file);
    for (let i = 0; i < 16; i++) {
      assert.equal(all[i * 512 * 1024], i + 1);
      assert.equal(all[i * 512 * 1024 + 256 * 1024 + 99], i + 1);
      assert.equal(all[i * 512 * 1024 + 256 * 1024 + 100], 0);
    }

    assert.throws(() => binding.writeAligned(f.fd, data, 100), RangeError);
    await assert.rejects(binding.writeAligned(-1, data, 0), { code: 'EBADF', errno: 9, syscall: 'pwrite' });
    assert.throws(() => binding.readComplete(f.fd, 1), { code: 'ENOTTY', syscall: 'ioctl' });
    assert.throws(() => binding.command(f.fd, 'bind ondemand'), { code: 'EINVAL', syscall: 'write' });
  } finally {
    fs.closeSync(f.fd);
    fs.rmSync(f.dir, { recursive: true });
  }
});

test('dataRanges finds exactly the written ranges of a sparse file (SEEK_DATA/SEEK_HOLE)', () => {
  const dir = fs.mkdtempSync(path.join(process.env.NYDUS_TEST_TMP ?? '/var/tmp', 'fscache-ranges-'));
  const file = path.join(dir, 'sparse');
  const fd = fs.openSync(file, 'w+');
  try {
    fs.ftruncateSync(fd, 64 << 20);
    assert.deepEqual(binding.dataRanges(fd, 0, 64 << 20), [], 'a new sparse file holds nothing');
    // Written ranges far apart, so that every file system with holes keeps them apart.
    fs.writeSync(fd, Buffer.alloc(1 << 20, 1), 0, 1 << 20, 8 << 20);
    fs.writeSync(fd, Buffer.alloc(1 << 20, 2), 0, 1 << 20, 32 << 20);
    const all = binding.dataRanges(fd, 0, 64 << 20);
    assert.deepEqual(all, [8 << 20, 9 << 20, 32 << 20, 33 << 20]);
    // Clipped to the window asked for.
    assert.deepEqual(binding.dataRanges(fd, (8 << 20) + 4096, 32 << 20), [(8 << 20) + 4096, 9 << 20]);
    assert.deepEqual(binding.dataRanges(fd, 10 << 20, 20 << 20), []);
    assert.throws(() => binding.dataRanges(-1, 0, 4096), { code: 'EBADF', syscall: 'lseek' });
  } finally {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true });
  }
});

test('sendState/receiveState hand bytes and an fd to a supervisor and take them back (snapshotter protocol)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fscache-sup-'));
  const sock = path.join(dir, 'supervisor.sock');
  // The supervisor is an independent implementation of nydus-snapshotter's side (Python).
  const sup = new TestSupervisor(sock);
  const file = path.join(dir, 'device-stand-in');
  fs.writeFileSync(file, 'x');
  const fd = fs.openSync(file, 'r');
  try {
    const state = Buffer.from(JSON.stringify({ images: Array.from({ length: 3000 }, (_, i) => `image-${i}`) }));
    await sup.listen('recv');
    await binding.sendState(sock, state, fd, 5000);
    assert.equal(await sup.answer(), `received ${state.length} ${fs.fstatSync(fd).ino}`);
    await sup.listen('send');
    const back = await binding.receiveState(sock, 1 << 20, 5000);
    assert.equal(await sup.answer(), `sent ${state.length}`);
    assert.ok(back.data.equals(state), 'the state comes back byte for byte');
    assert.ok(back.fd >= 0 && back.fd !== fd);
    assert.equal(fs.fstatSync(back.fd).ino, fs.fstatSync(fd).ino, 'the fd that comes back is the one sent');
    fs.closeSync(back.fd);
    // Nobody listening: a clear error naming the socket, at once.
    fs.rmSync(sock, { force: true });
    await assert.rejects(binding.sendState(sock, state, fd, 1000), { code: 'ENOENT', syscall: 'connect' });
  } finally {
    fs.closeSync(fd);
    sup.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
