/**
 * The tar parser against archives written byte by byte, as no well-behaved writer makes them: what
 * hides behind a header-only entry, malformed sparse maps, out-of-range numbers and bad xattr names.
 * Entry lists are compared with Python's tarfile reading the same bytes (which, as Go's archive/tar
 * that container runtimes unpack with, takes these types as header-only; GNU tar skips a size field
 * on symlinks, devices and FIFOs).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { TarReader, type TarEntry } from '../src/builder/tar-reader.ts';
import { tmpDir } from './helpers/fixtures.ts';

const work = tmpDir('tar-reader');
after(() => fs.rmSync(work, { recursive: true, force: true }));

const BLOCK = 512;

interface Header {
  name: string;
  size?: number;
  typeflag?: string;
  linkname?: string;
  /** Raw bytes for the 8-byte uid field (e.g. GNU base-256). */
  uid?: Buffer;
  /** Raw bytes for the 12-byte mtime field. */
  mtime?: Buffer;
}

/** One ustar header block, checksum computed. */
function header(h: Header): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(h.name, 0, 100, 'latin1');
  b.write('0000644\0', 100, 'latin1');
  (h.uid ?? Buffer.from('0000000\0')).copy(b, 108);
  b.write('0000000\0', 116, 'latin1');
  b.write(`${(h.size ?? 0).toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  (h.mtime ?? Buffer.from('14000000000\0')).copy(b, 136);
  b.write(h.typeflag ?? '0', 156, 'latin1');
  if (h.linkname) b.write(h.linkname, 157, 100, 'latin1');
  b.write('ustar\0' + '00', 257, 'latin1');
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return b;
}

/** `data` padded to whole blocks. */
function blocks(data: Buffer | string): Buffer {
  const d = Buffer.from(data);
  return Buffer.concat([d, Buffer.alloc((BLOCK - (d.length % BLOCK)) % BLOCK)]);
}

/** A file entry with its data. */
function file(name: string, data: string): Buffer {
  return Buffer.concat([header({ name, size: data.length }), blocks(data)]);
}

/** A pax extended header ('x') with these records. */
function pax(records: Array<[string, string | Buffer]>): Buffer {
  const body = Buffer.concat(records.map(([k, v]) => {
    const rec = Buffer.concat([Buffer.from(` ${k}=`), Buffer.from(v), Buffer.from('\n')]);
    let len = rec.length + 1;
    while (String(len).length + rec.length !== len) len++;
    return Buffer.concat([Buffer.from(String(len)), rec]);
  }));
  return Buffer.concat([header({ name: 'PaxHeader', size: body.length, typeflag: 'x' }), blocks(body)]);
}

const END = Buffer.alloc(2 * BLOCK);

/** Every entry the parser gives, each file's content read whole. */
async function readAll(bytes: Buffer): Promise<Array<{ entry: TarEntry; content: string }>> {
  const reader = new TarReader((async function* () { yield bytes; })(), 'test.tar');
  const out: Array<{ entry: TarEntry; content: string }> = [];
  for (let e; (e = await reader.next());) {
    const buf = Buffer.alloc(e.size);
    if (e.type === 'file') await reader.readContent(buf, e.size);
    out.push({ entry: e, content: buf.toString('latin1') });
  }
  return out;
}

/** The entry names Python's tarfile lists for the same bytes. */
function pythonTarNames(bytes: Buffer): string[] {
  const f = path.join(work, `py-${process.hrtime.bigint()}.tar`);
  fs.writeFileSync(f, bytes);
  const out = execFileSync('python3', ['-c', 'import sys, tarfile\nfor m in tarfile.open(sys.argv[1]): print(m.name)', f], { encoding: 'utf8' });
  return out.split('\n').filter(Boolean);
}

test('an entry whose header says it has no data (link, symlink, device, directory, FIFO) hides nothing behind its size field', async () => {
  for (const typeflag of ['1', '2', '3', '4', '5', '6']) {
    // The size field claims the next header as data: a reader that skips it loses "evil".
    const inner = file('evil', 'EVIL');
    const bytes = Buffer.concat([file('a', 'data'), header({ name: 'b', size: inner.length, typeflag, linkname: 'a' }), inner, END]);
    const names = (await readAll(bytes)).map((x) => x.entry.path.toString());
    assert.deepEqual(names, ['a', 'b', 'evil'], `typeflag ${typeflag}`);
    assert.deepEqual(names, pythonTarNames(bytes), `typeflag ${typeflag}: as Python's tarfile reads it`);
  }
});

test('a sparse map with a number that is not plain decimal digits is refused, never read as NaN', async () => {
  const secret = file('secret', 'TOPSECRET-PASSWORD'.repeat(10));
  for (const offset of ['x', '0x10', '1e3', '', '-1', '99999999999999999999']) {
    const bytes = Buffer.concat([secret, pax([['GNU.sparse.size', '100'], ['GNU.sparse.offset', offset], ['GNU.sparse.numbytes', '0']]), file('s', ''), END]);
    await assert.rejects(readAll(bytes), /layer test\.tar: entry "s": malformed sparse map/, `GNU.sparse.offset=${JSON.stringify(offset)}`);
  }
  for (const map of ['0,x', '0,0x10', '1e3,0', '0,']) {
    const bytes = Buffer.concat([pax([['GNU.sparse.size', '100'], ['GNU.sparse.map', map]]), file('s', ''), END]);
    await assert.rejects(readAll(bytes), /malformed sparse map/, `GNU.sparse.map=${JSON.stringify(map)}`);
  }
});

test('a sparse 1.0 map line longer than any number is refused at once, not scanned again block after block', { timeout: 30_000 }, async () => {
  // Before: each block appended to the text and the text searched from its start again (4 MiB of
  // digits took two minutes). 32 MiB of digits and no newline.
  const digits = Buffer.alloc(32 << 20, '1');
  const bytes = Buffer.concat([
    pax([['GNU.sparse.major', '1'], ['GNU.sparse.minor', '0'], ['GNU.sparse.name', 's'], ['GNU.sparse.realsize', '10000']]),
    header({ name: 'GNUSparseFile/s', size: digits.length }), digits, END,
  ]);
  await assert.rejects(readAll(bytes), /entry "GNUSparseFile\/s": malformed sparse map/);
  // A well-formed one still reads: 3 bytes of data at 4096 in a file of 8192.
  const map = blocks('1\n4096\n3\n');
  const ok = Buffer.concat([
    pax([['GNU.sparse.major', '1'], ['GNU.sparse.minor', '0'], ['GNU.sparse.name', 'ok'], ['GNU.sparse.realsize', '8192']]),
    header({ name: 'GNUSparseFile/ok', size: map.length + 3 }), blocks(Buffer.concat([map, Buffer.from('abc')])), END,
  ]);
  const [e] = await readAll(ok);
  assert.equal(e.entry.size, 8192);
  assert.equal(e.content, '\0'.repeat(4096) + 'abc' + '\0'.repeat(8192 - 4099));
});

test('numbers out of range: a negative base-256 uid and a pax mtime past 2^53 are refused; a negative mtime is a time', async () => {
  const minusOne = Buffer.alloc(8, 0xff);
  await assert.rejects(readAll(Buffer.concat([header({ name: 'f', uid: minusOne }), END])), /layer test\.tar: tar header at byte 0: uid -1 out of range/);
  await assert.rejects(readAll(Buffer.concat([pax([['mtime', '1' + '0'.repeat(400)]]), file('f', 'x'), END])), /entry "f": pax mtime "1000.*" is out of range/);
  await assert.rejects(readAll(Buffer.concat([pax([['mtime', '9007199254740993']]), file('f', 'x'), END])), /is out of range/);
  // base-256 -86400: a day before the epoch.
  const mtime = Buffer.alloc(12, 0xff);
  mtime.writeIntBE(-86400, 6, 6);
  const [e] = await readAll(Buffer.concat([header({ name: 'old', mtime }), END]));
  assert.equal(e.entry.mtimeSec, -86400);
});

test('a LIBARCHIVE.xattr name that is not URI-encoded text is refused naming the entry', async () => {
  const bytes = Buffer.concat([pax([['LIBARCHIVE.xattr.user.%ZZ', 'MQ==']]), file('f', 'a'), END]);
  await assert.rejects(readAll(bytes), /layer test\.tar: entry "f": pax record "LIBARCHIVE\.xattr\.user\.%ZZ": the xattr name is not URI-encoded text/);
  const good = Buffer.concat([pax([['LIBARCHIVE.xattr.user.a%20b', 'MQ==']]), file('f', 'a'), END]);
  const [e] = await readAll(good);
  assert.deepEqual([...e.entry.xattrs], [['user.a b', Buffer.from('1')]]);
});

test('pax global headers: more than the records held at once is refused; every later entry no longer pays for them', { timeout: 60_000 }, async () => {
  /** A pax global header ('g') with these records. */
  const globalHeader = (records: Array<[string, string]>) => {
    const x = pax(records);
    x[156] = 'g'.charCodeAt(0);
    x.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of x.subarray(0, BLOCK)) sum += b;
    x.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    return x;
  };
  // A git archive's comment is taken, and applies to what follows.
  const ok = await readAll(Buffer.concat([globalHeader([['comment', 'abc123'], ['uid', '7']]), file('a', 'x'), END]));
  assert.equal(ok[0].entry.uid, 7);
  // 200,000 records (2.5 MB), then entries: each entry once copied every one of them (0.3 s apiece).
  const many = globalHeader(Array.from({ length: 200_000 }, (_, i) => [`k${i}`, 'v'] as [string, string]));
  const t0 = performance.now();
  await assert.rejects(readAll(Buffer.concat([many, ...Array.from({ length: 200 }, (_, i) => file(`f${i}`, '')), END])),
    /layer test\.tar: pax global headers at byte 0 hold more than 1024 records/);
  assert.ok(performance.now() - t0 < 20_000, 'refused without reading on');
});

test('sparse maps: more segments than taken are refused before they are held; segments of no bytes cost nothing chunk after chunk', { timeout: 60_000 }, async () => {
  // A 1.0 map that declares 5 million segments: refused at its count, not read into memory.
  const declared = blocks('5000000\n0\n0\n');
  const huge = Buffer.concat([
    pax([['GNU.sparse.major', '1'], ['GNU.sparse.minor', '0'], ['GNU.sparse.name', 'h'], ['GNU.sparse.realsize', '1000']]),
    header({ name: 'GNUSparseFile/h', size: declared.length }), declared, END,
  ]);
  await assert.rejects(readAll(huge), /entry "GNUSparseFile\/h": sparse map of 5000000 segments, more than the 262144 taken/);
  // 0.1's comma list, counted before it is split.
  const list = Array.from({ length: 300_000 }, () => '0,0').join(',');
  await assert.rejects(readAll(Buffer.concat([pax([['GNU.sparse.size', '100'], ['GNU.sparse.map', list]]), file('s', ''), END])), /sparse map of \d+ segments, more than the 262144 taken/);
  // 200,000 segments of no bytes at the file's end (valid), a file of 20,000 chunks of holes: each
  // look ahead for a hole walked all of them (26 s); now the reader keeps none.
  const lines = blocks(`200000\n${'20971520000\n0\n'.repeat(200_000)}`);
  const sparse = Buffer.concat([
    pax([['GNU.sparse.major', '1'], ['GNU.sparse.minor', '0'], ['GNU.sparse.name', 'z'], ['GNU.sparse.realsize', '20971520000']]),
    header({ name: 'GNUSparseFile/z', size: lines.length }), lines, END,
  ]);
  const reader = new TarReader((async function* () { yield sparse; })(), 'test.tar');
  const e = (await reader.next())!;
  assert.equal(e.size, 20971520000);
  const t0 = performance.now();
  for (let pos = 0; pos < e.size; pos += 1 << 20) {
    assert.ok(reader.holeAhead(1 << 20));
    reader.skipHole(1 << 20);
  }
  assert.ok(performance.now() - t0 < 5_000, `20,000 holes looked at in ${(performance.now() - t0).toFixed(0)} ms`);
  assert.equal(await reader.next(), null);
});

test('a pax header of more records than taken is refused as it is parsed, not held (16 MiB of 6-byte records held 1.1 GB)', { timeout: 60_000 }, async () => {
  const tiny = Buffer.from('5 a=\n'.repeat(600_000));
  const t0 = performance.now();
  await assert.rejects(readAll(Buffer.concat([header({ name: 'PaxHeader', size: tiny.length, typeflag: 'x' }), blocks(tiny), file('f', 'x'), END])),
    /layer test\.tar: pax header at byte 0 holds more than 525312 records/);
  assert.ok(performance.now() - t0 < 20_000, 'refused without reading on');
  // A sparse 0.0 map of the most segments taken (two records each) is still read.
  const segments = 1 << 18;
  const map: Array<[string, string]> = [['GNU.sparse.size', String(segments * 2)], ['GNU.sparse.numblocks', String(segments)]];
  for (let i = 0; i < segments; i++) map.push(['GNU.sparse.offset', String(2 * i)], ['GNU.sparse.numbytes', '1']);
  const entries = await readAll(Buffer.concat([pax(map), file('s', 'x'.repeat(segments)), END]));
  assert.equal(entries[0].entry.size, segments * 2);
});
