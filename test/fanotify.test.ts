/**
 * The fanotify front end's pure parts: nydusd's FUSE-mode config read as a BlobCacheEntry, and the
 * journal of unanswered events a restarted worker answers from.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withTunable } from '../src/daemon/run.ts';
import fs from 'node:fs';
import path from 'node:path';
import { entryBodyFromFsConfig, parseBlobCacheEntry, parseConfigText } from '../src/daemon/config.ts';
import { JOURNAL_READ_MAX, PendingEventJournal } from '../src/daemon/frontend/fanotify-journal.ts';
import { tmpDir } from './helpers/fixtures.ts';

test('fanotify config: nydusd v2 FUSE config becomes an entry with its backend, work_dir and prefetch', () => {
  const body = entryBodyFromFsConfig({
    version: 2, backend: { type: 'localfs', localfs: { dir: '/blobs' } },
    cache: { type: 'filecache', filecache: { work_dir: '/cache' } }, rafs: { prefetch: { enable: true, threads: 2 } },
  }, '/img.boot', 'fanotify-1');
  const e = parseBlobCacheEntry(body);
  assert.deepEqual([e.id, e.metadataPath, e.workDir, e.backend], ['fanotify-1', '/img.boot', '/cache', { type: 'localfs', dir: '/blobs' }]);
  assert.equal(e.prefetch.enable, true);
  assert.equal(e.prefetch.threads, 2);
  assert.equal(e.prefetch.stream, false);
});

test('config: nydus\'s switches that change nothing here (validate, enable_xattr, iostats_files, ...) are accepted as booleans and refused as anything else, naming the field, as nydusd refuses the config; a prefetch batch of 0 is nydusd\'s default', () => {
  const v2 = (rafs: object, cache: object = {}) => parseBlobCacheEntry(entryBodyFromFsConfig({
    version: 2, backend: { type: 'localfs', localfs: { dir: '/blobs' } },
    cache: { type: 'filecache', filecache: { work_dir: '/cache' }, ...cache }, rafs,
  }, '/img.boot', 'x'), 'fs-config');
  const v1 = (top: object, cache: object = {}) => parseBlobCacheEntry(entryBodyFromFsConfig({
    device: { backend: { type: 'localfs', config: { dir: '/blobs' } }, cache: { type: 'blobcache', config: { work_dir: '/cache' }, ...cache } }, mode: 'direct', ...top,
  }, '/img.boot', 'x'), 'fs-config');
  v2({ validate: false, enable_xattr: true, iostats_files: false, access_pattern: true, latest_read_files: false }, { validate: true, compressed: false });
  v1({ digest_validate: false, enable_xattr: true, iostats_files: true, access_pattern: false, latest_read_files: true }, { validate: false, compressed: false });
  assert.throws(() => v2({ validate: 'yes' }), /config\.rafs\.validate must be true or false/);
  assert.throws(() => v2({ iostats_files: 1 }), /config\.rafs\.iostats_files must be true or false/);
  assert.throws(() => v2({}, { validate: 'no' }), /config\.cache\.validate must be true or false/);
  assert.throws(() => v1({ digest_validate: 'yes' }), /config\.digest_validate must be true or false/);
  assert.throws(() => v1({ access_pattern: 'on' }), /config\.access_pattern must be true or false/);
  assert.throws(() => v1({}, { validate: 1 }), /config\.device\.cache\.validate must be true or false/);
  // The snapshotter's fscache body has the cache's switches too.
  const put = (cache: object) => parseBlobCacheEntry({ type: 'bootstrap', id: 'x', domain_id: '', config_v2: { version: 2, backend: { type: 'localfs', localfs: { dir: '/b' } }, cache: { type: 'fscache', fscache: { work_dir: '/c' }, ...cache }, metadata_path: '/i.boot' } });
  put({ compressed: false, validate: false });
  assert.throws(() => put({ validate: 'false' }), /config_v2\.cache\.validate must be true or false/);
  assert.equal(v2({ prefetch: { enable: true, batch_size: 0 } }).prefetch.batchSize, 1 << 20, 'batch_size 0: nydusd\'s default');
  assert.equal(v1({ fs_prefetch: { enable: true, threads_count: 2, merging_size: 0 } }).prefetch.batchSize, 1 << 20, 'merging_size 0 too');
});

test('config: stream_prefetch (nydus\'s streaming blob prefetch) is read in each prefetch section; a value other than true or false is refused naming it', () => {
  const v2 = (prefetch: object, where: 'rafs' | 'cache') => parseBlobCacheEntry(entryBodyFromFsConfig({
    version: 2, backend: { type: 'localfs', localfs: { dir: '/blobs' } },
    cache: { type: 'filecache', filecache: { work_dir: '/cache' }, ...(where === 'cache' ? { prefetch } : {}) }, ...(where === 'rafs' ? { rafs: { prefetch } } : {}),
  }, '/img.boot', 'x'), 'fs-config');
  assert.equal(v2({ enable: true, stream_prefetch: true }, 'rafs').prefetch.stream, true);
  assert.equal(v2({ enable: true, stream_prefetch: true }, 'cache').prefetch.stream, true);
  const v1 = parseBlobCacheEntry(entryBodyFromFsConfig({
    device: { backend: { type: 'localfs', config: { dir: '/blobs' } }, cache: { type: 'blobcache', config: { work_dir: '/cache' } } },
    fs_prefetch: { enable: true, threads_count: 3, stream_prefetch: true },
  }, '/img.boot', 'x'), 'fs-config');
  assert.equal(v1.prefetch.stream, true);
  assert.throws(() => v2({ enable: true, stream_prefetch: 'yes' }, 'rafs'), /rafs\.prefetch\.stream_prefetch must be true or false/);
  // Both sections on: the file system's says, as nydusd reads it there (the cache's gives the workers).
  const both = (rafs: object, cache: object) => parseBlobCacheEntry(entryBodyFromFsConfig({
    version: 2, backend: { type: 'localfs', localfs: { dir: '/blobs' } },
    cache: { type: 'filecache', filecache: { work_dir: '/cache' }, prefetch: cache }, rafs: { prefetch: rafs },
  }, '/img.boot', 'x'), 'fs-config').prefetch;
  assert.deepEqual([both({ enable: true, stream_prefetch: true }, { enable: true, threads: 3 })].map((p) => [p.stream, p.threads]), [[true, 3]]);
  assert.equal(both({ enable: true }, { enable: true, stream_prefetch: true }).stream, false);
});

test('fanotify config: nydusd v1 FUSE config (device.backend, device.cache, fs_prefetch) is read too', () => {
  const e = parseBlobCacheEntry(entryBodyFromFsConfig({
    device: { backend: { type: 'localfs', config: { dir: '/blobs' } }, cache: { type: 'blobcache', config: { work_dir: '/cache' } } },
    mode: 'direct', fs_prefetch: { enable: true, threads_count: 3 },
  }, '/img.boot', 'x'));
  assert.deepEqual([e.workDir, e.backend, e.prefetch.enable, e.prefetch.threads], ['/cache', { type: 'localfs', dir: '/blobs' }, true, 3]);
  // Errors name the fields as the file has them, not as the entry made of it.
  const v1 = (backendConfig: object, fsPrefetch?: object) => parseBlobCacheEntry(entryBodyFromFsConfig({
    device: { backend: { type: 'registry', config: backendConfig }, cache: { type: 'blobcache', config: { work_dir: '/cache' } } }, ...(fsPrefetch ? { fs_prefetch: fsPrefetch } : {}),
  }, '/img.boot', 'x'), 'fs-config');
  assert.throws(() => v1({ repo: 'r' }), /^.*config\.device\.backend\.config\.host is required/);
  assert.throws(() => v1({ host: 'h', repo: 'r' }, { enable: true, threads_count: 0 }), /config\.fs_prefetch\.threads_count must be 1 to 1024/);
});

test('config text: TOML (v2), as nydusd reads it after JSON, gives the entry the same JSON gives; TOML of another version and text of neither are refused naming the place', () => {
  const toml = `# nydusd v2, in TOML as nydus's misc/configs have it
version = 2
id = "my_id"

[backend]
type = "registry"

[backend.registry]
scheme = "http"
host = "127.0.0.1:5000"
repo = "library/app"
timeout = 10

[cache]
type = "filecache"

[cache.filecache]
work_dir = "/cache"

[rafs]
mode = "direct"
batch_size = 1048576

[rafs.prefetch]
enable = true
threads = 2
`;
  const json = {
    version: 2, id: 'my_id', backend: { type: 'registry', registry: { scheme: 'http', host: '127.0.0.1:5000', repo: 'library/app', timeout: 10 } },
    cache: { type: 'filecache', filecache: { work_dir: '/cache' } }, rafs: { mode: 'direct', batch_size: 1048576, prefetch: { enable: true, threads: 2 } },
  };
  assert.deepEqual(parseConfigText(toml, '--config c.toml'), json);
  assert.deepEqual(parseConfigText(JSON.stringify(json), 'x'), json);
  const entry = (c: unknown) => parseBlobCacheEntry(entryBodyFromFsConfig(c, '/img.boot', 'fanotify-1'), 'fs-config');
  assert.deepEqual(entry(parseConfigText(toml, 'x')), entry(json));
  assert.throws(() => parseConfigText('version = 1\n[device]\n', 'body.config'), /^ConfigError: body\.config: a TOML config is read as version 2 only/);
  assert.throws(() => parseConfigText('{"version": 2,', '--config /etc/n.json'), /^ConfigError: --config \/etc\/n\.json is neither JSON \(.+\) nor TOML \(.+ at line 1, column \d+\)$/);
  assert.throws(() => parseConfigText('version = 2\n[rafs]\nbatch_size = inf\n', 'x'), /^ConfigError: x: config\.rafs\.batch_size is not a finite number$/);
  assert.throws(() => parseConfigText('version = 2\nthreads = [1, nan]\n', 'x'), /^ConfigError: x: config\.threads\[1\] is not a finite number$/);
  assert.throws(() => parseConfigText(' \n', 'body.config'), /^ConfigError: body\.config is empty$/);
});

test('fanotify config: a config without a cache work_dir, or of an unknown version, is refused naming the field', () => {
  assert.throws(() => entryBodyFromFsConfig({ version: 2, backend: { type: 'localfs', localfs: { dir: '/b' } } }, '/i', 'x'), /config\.cache\.type must be one of/);
  assert.throws(() => entryBodyFromFsConfig({ version: 2, backend: { type: 'localfs', localfs: { dir: '/b' } }, cache: { type: 'filecache' } }, '/i', 'x'), /config\.cache\.filecache\.work_dir is required/);
  assert.throws(() => entryBodyFromFsConfig({ device: { backend: { type: 'localfs', config: {} } } }, '/i', 'x'), /config\.device\.cache\.type/);
  assert.throws(() => entryBodyFromFsConfig({ version: 3 }, '/i', 'x'), /config\.version 3 is not supported/);
  assert.throws(() => entryBodyFromFsConfig('nope', '/i', 'x'), /config must be a JSON object/);
  // Its cache files are named in the mount's device= options: refused before anything is made in it.
  const workDir = (dir: string) => entryBodyFromFsConfig({ version: 2, backend: { type: 'localfs', localfs: { dir: '/b' } }, cache: { type: 'filecache', filecache: { work_dir: dir } } }, '/i', 'x');
  for (const dir of ['/var/cache\nnydus', '/var/a,b', '/var/a b']) {
    assert.throws(() => workDir(dir), (e: Error) => e.message.startsWith(`config.cache.filecache.work_dir ${JSON.stringify(dir)} holds a comma or white space`), dir);
  }
  assert.throws(() => entryBodyFromFsConfig({ device: { backend: { type: 'localfs', config: {} }, cache: { type: 'blobcache', config: { work_dir: '/a,b' } } } }, '/i', 'x'), /config\.device\.cache\.config\.work_dir "\/a,b" holds a comma or white space/);
  assert.equal((workDir('/var/cache/nydus') as { config_v2: { cache: { fscache: { work_dir: string } } } }).config_v2.cache.fscache.work_dir, '/var/cache/nydus');
});

test('fanotify journal: the events left unanswered are read back (last record per fd wins); empty once all are answered; an answer recorded twice loses no other pending event', () => {
  const dir = tmpDir('fanjournal');
  try {
    const file = path.join(dir, 'pending-events');
    const j = new PendingEventJournal(file);
    j.add({ fd: 20, dev: 1, ino: 2, offset: 0, count: 65536 });
    j.add({ fd: 21, dev: 1, ino: 2, offset: 65536, count: 131072 });
    j.done(20);
    j.add({ fd: 20, dev: 1, ino: 3, offset: 4096, count: 4096 });
    assert.deepEqual(PendingEventJournal.read(file).sort((a, b) => a.fd - b.fd), [
      { fd: 20, dev: 1, ino: 3, offset: 4096, count: 4096 },
      { fd: 21, dev: 1, ino: 2, offset: 65536, count: 131072 },
    ]);
    j.done(20);
    j.done(21);
    assert.deepEqual(PendingEventJournal.read(file), [], 'nothing pending');
    // An idle journal that has grown past its bound is truncated; a small one is left to grow.
    for (let i = 0; i < 20_000; i++) {
      j.add({ fd: 40, dev: 1, ino: 2, offset: i * 4096, count: 4096 });
      j.done(40);
    }
    assert.ok(fs.statSync(file).size < 300 * 1024, `journal bounded (${fs.statSync(file).size} bytes)`);
    assert.deepEqual(PendingEventJournal.read(file), []);
    // Grown past its bound while one event stays pending: an answer recorded twice for another (a
    // handler that failed after answering) does not count for the pending one, which stays.
    j.add({ fd: 41, dev: 1, ino: 2, offset: 0, count: 4096 });
    for (let i = 0; i < 10_000; i++) {
      j.add({ fd: 42, dev: 1, ino: 2, offset: i * 4096, count: 4096 });
      j.done(42);
    }
    j.add({ fd: 50, dev: 1, ino: 2, offset: 0, count: 4096 });
    j.done(50);
    j.done(50);
    assert.deepEqual(PendingEventJournal.read(file), [{ fd: 41, dev: 1, ino: 2, offset: 0, count: 4096 }]);
    j.done(41);
    assert.deepEqual(PendingEventJournal.read(file), []);
    j.close();
    // A successor carries the pending ones over into its own journal.
    const pending = [{ fd: 30, dev: 5, ino: 6, offset: 0, count: 1 }];
    const k = new PendingEventJournal(file, pending);
    assert.deepEqual(PendingEventJournal.read(file), pending);
    k.done(30);
    assert.deepEqual(PendingEventJournal.read(file), []);
    k.close();
    assert.deepEqual(PendingEventJournal.read(path.join(dir, 'missing')), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('fanotify journal: only its end is read back, so a huge one (a line of garbage past the bound) costs a bounded read and keeps the pending records at its end', () => {
  const dir = tmpDir('fanjournal-huge');
  try {
    const file = path.join(dir, 'pending-events');
    const fd = fs.openSync(file, 'w');
    fs.writeSync(fd, '+ 7 1 2 0 4096\n');
    // One line longer than the bound, then what a worker wrote after it.
    const garbage = Buffer.alloc(1 << 20, 'x');
    for (let written = 0; written < JOURNAL_READ_MAX + (4 << 20); written += garbage.length) fs.writeSync(fd, garbage);
    fs.writeSync(fd, '\n+ 20 1 2 8192 4096\n+ 21 1 2 0 4096\n- 21\n');
    fs.closeSync(fd);
    assert.ok(fs.statSync(file).size > JOURNAL_READ_MAX);
    // fd 7's record lies before the part read: a real journal is truncated long before it grows so.
    assert.deepEqual(PendingEventJournal.read(file), [{ fd: 20, dev: 1, ino: 2, offset: 8192, count: 4096 }]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('nydusd worker env: a glibc tunable is added to GLIBC_TUNABLES, and one the user set is kept as it is', () => {
  assert.equal(withTunable(undefined, 'glibc.malloc.hugetlb', '1'), 'glibc.malloc.hugetlb=1');
  assert.equal(withTunable('glibc.malloc.arena_max=2', 'glibc.malloc.hugetlb', '1'), 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1');
  assert.equal(withTunable('glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2', 'glibc.malloc.hugetlb', '1'), 'glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2');
});

test('fd numbers a journal names: one no process can have (past an int, not below RLIMIT_NOFILE, negative) is a RangeError, never truncated or dup3\'d', async () => {
  const { reserveFdNumber } = await import('../native/fscache/fanotify.ts');
  for (const n of [2 ** 32, 999_999_999, -1, 1.5]) assert.throws(() => reserveFdNumber(n), RangeError, String(n));
  assert.throws(() => reserveFdNumber(2 ** 31 - 1), /not below the open files limit/);
  // A free number below the limit is held, and released.
  const release = reserveFdNumber(900);
  release();
});

test('daemon directory lock: a second holder is refused naming the directory and the pid; the lock goes with its fd', async () => {
  const dir = tmpDir('fanlock');
  try {
    const run = await import('../src/daemon/run.ts') as { lockDaemonDir?: (dir: string, what: string) => number };
    assert.ok(run.lockDaemonDir, 'run.ts locks daemon directories');
    const fd = run.lockDaemonDir(path.join(dir, 'state'), '--fanotify directory');
    assert.throws(() => run.lockDaemonDir!(path.join(dir, 'state'), '--fanotify directory'),
      new RegExp(`^NydusError: --fanotify directory ${dir}/state is in use by another nydusd \\(pid ${process.pid}\\)`));
    fs.closeSync(fd);
    fs.closeSync(run.lockDaemonDir(path.join(dir, 'state'), '--fanotify directory'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('config: localfs alt_dirs and blob_file are read; a compressed or encrypted cache and an unknown rafs mode are refused naming the field', () => {
  const v2 = (localfs: object, cache: object = { type: 'filecache', filecache: { work_dir: '/cache' } }, rafs: object = {}) =>
    parseBlobCacheEntry(entryBodyFromFsConfig({ version: 2, backend: { type: 'localfs', localfs }, cache, rafs }, '/img.boot', 'x'), 'fs-config');
  assert.deepEqual(v2({ dir: '/blobs', alt_dirs: ['/more', '/most'] }).backend, { type: 'localfs', dir: '/blobs', altDirs: ['/more', '/most'] });
  assert.deepEqual(v2({ blob_file: '/one.blob' }).backend, { type: 'localfs', dir: '', blobFile: '/one.blob' });
  // (Named as the FUSE-mode config has them: its root is `config`.)
  assert.throws(() => v2({}), /^ConfigError: config\.backend\.localfs\.dir \(or blob_file\) is required/);
  assert.throws(() => v2({ dir: '/b', alt_dirs: '/c' }), /^ConfigError: config\.backend\.localfs\.alt_dirs must be an array of directory paths/);
  assert.throws(() => v2({ dir: '/b' }, { type: 'filecache', compressed: true, filecache: { work_dir: '/c' } }), /^ConfigError: config\.cache\.compressed: the kernel reads the cache files directly/);
  assert.throws(() => v2({ dir: '/b' }, { type: 'filecache', filecache: { work_dir: '/c', enable_encryption: true } }), /config\.cache\.filecache\.enable_encryption: the kernel reads the cache files directly, so they cannot be encrypted/);
  assert.throws(() => v2({ dir: '/b' }, undefined, { mode: 'bogus' }), /config\.rafs\.mode "bogus" must be "direct" or "cached"/);
  assert.equal(v2({ dir: '/b' }, { type: 'filecache', compressed: false, filecache: { work_dir: '/c', enable_encryption: false } }, { mode: 'cached' }).workDir, '/c');
  const v1 = (extra: object, cache: object = { type: 'blobcache', config: { work_dir: '/cache' } }) => parseBlobCacheEntry(entryBodyFromFsConfig({
    device: { backend: { type: 'localfs', config: { dir: '/blobs' } }, cache }, ...extra }, '/img.boot', 'x'));
  assert.throws(() => v1({}, { type: 'blobcache', compressed: true, config: { work_dir: '/c' } }), /config\.device\.cache\.compressed/);
  assert.throws(() => v1({}, { type: 'blobcache', config: { work_dir: '/c', enable_encryption: true } }), /config\.device\.cache\.config\.enable_encryption/);
  assert.throws(() => v1({ mode: 'fast' }), /config\.mode "fast" must be "direct" or "cached"/);
  // nydus-snapshotter's fscache entry: config_v2 as PUT /api/v2/blobs gets it.
  assert.throws(() => parseBlobCacheEntry({ type: 'bootstrap', id: 'i', config_v2: { version: 2, backend: { type: 'localfs', localfs: { dir: '/b' } },
    cache: { type: 'fscache', compressed: true, fscache: { work_dir: '/c' } }, metadata_path: '/m' } }), /config_v2\.cache\.compressed/);
});

test('config: what prefetch_all means follows nydus: the blob cache prefetch of a PUT /api/v2/blobs entry fetches whole blobs, a file system prefetch honours it with nydus\'s defaults', () => {
  const base = { backend_type: 'localfs', backend_config: { dir: '/b' }, cache_type: 'fscache', cache_config: { work_dir: '/c' }, metadata_path: '/m' };
  const legacy = (prefetch: object) => parseBlobCacheEntry({ type: 'bootstrap', id: 'i', config: { ...base, prefetch_config: prefetch } }).prefetch.all;
  const v2 = (extra: object) => parseBlobCacheEntry({ type: 'bootstrap', id: 'i', config_v2: {
    version: 2, backend: { type: 'localfs', localfs: { dir: '/b' } }, metadata_path: '/m', cache: { type: 'fscache', fscache: { work_dir: '/c' } }, ...extra } }).prefetch.all;
  // nydus-snapshotter's template (prefetch_all false): nydusd's fscache manager prefetches every blob whole.
  assert.equal(legacy({ enable: true, threads_count: 8, merging_size: 1048576, bandwidth_rate: 0, prefetch_all: false }), true);
  assert.equal(v2({ cache: { type: 'fscache', fscache: { work_dir: '/c' }, prefetch: { enable: true, prefetch_all: false } } }), true);
  assert.equal(v2({ rafs: { prefetch: { enable: true } } }), false, 'the file system\'s prefetch: the table\'s files');
  assert.equal(v2({ rafs: { prefetch: { enable: true, prefetch_all: true } } }), true);
  const fuse = (config: object) => parseBlobCacheEntry(entryBodyFromFsConfig(config, '/img.boot', 'x'), 'fs-config').prefetch.all;
  const v1 = (fsPrefetch: object) => fuse({ device: { backend: { type: 'localfs', config: { dir: '/b' } }, cache: { type: 'blobcache', config: { work_dir: '/c' } } }, fs_prefetch: fsPrefetch });
  assert.deepEqual([v1({ enable: true }), v1({ enable: true, prefetch_all: false })], [true, false], 'v1 fs_prefetch: prefetch_all true unless said');
  const fuse2 = (where: object) => fuse({ version: 2, backend: { type: 'localfs', localfs: { dir: '/b' } }, cache: { type: 'filecache', filecache: { work_dir: '/c' } }, ...where });
  assert.deepEqual([fuse2({ rafs: { prefetch: { enable: true } } }), fuse2({ rafs: { prefetch: { enable: true, prefetch_all: true } } })], [false, true], 'v2: false unless said');
  // nydus's own nydusd-config-v2.toml: both prefetch sections on, the whole image asked for in
  // rafs.prefetch (the file system's), the workers in cache.prefetch.
  const both = { cache: { type: 'filecache', filecache: { work_dir: '/c' }, prefetch: { enable: true, threads: 8, batch_size: 1000000 } }, rafs: { prefetch: { enable: true, prefetch_all: true } } };
  assert.equal(fuse2(both), true, 'rafs.prefetch\'s prefetch_all with cache.prefetch on too');
  assert.equal(parseBlobCacheEntry(entryBodyFromFsConfig({ version: 2, backend: { type: 'localfs', localfs: { dir: '/b' } }, ...both }, '/img.boot', 'x'), 'fs-config').prefetch.threads, 8, 'the workers from cache.prefetch');
  assert.throws(() => legacy({ enable: true, prefetch_all: 'yes' }), /config\.prefetch_config\.prefetch_all must be true or false/);
  // A writable upper layer (nydus's overlay) is refused, not a read-only mount where writes were asked for.
  assert.throws(() => fuse2({ overlay: { upper_dir: '/u', work_dir: '/o' } }), /config\.overlay: a writable upper layer is not supported by nydus-ts/);
});
