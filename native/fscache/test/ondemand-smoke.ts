/**
 * Helpers of guest-smoke.sh (the fscache addon against a real kernel):
 *
 *   tag <bootstrap> <tag>
 *       Names the first device slot of an erofs-utils image `<tag>` (erofs-utils 1.5 leaves it empty,
 *       which fscache mode refuses) and recomputes the superblock checksum.
 *   daemon --cache <dir> --fsid <fsid>... --bootstrap <file> --blob <tag>=<file> --ready <file> --stats <file>
 *       A tiny on-demand daemon on the addon: OPEN answers with the backing file's size, READ copies
 *       the range from the file, CLOSE closes the anonymous fd. Writes <ready> once bound, its
 *       counters to <stats> on SIGUSR1 and on SIGTERM (then exits).
 *
 * Run with: node --import tsx native/fscache/test/ondemand-smoke.ts <command> ...
 */
import fs from 'node:fs';
import { parseArgs, promisify } from 'node:util';
import { CACHEFILES_WRITE_ALIGN, CachefilesDevice, type CachefilesMessage } from '../index.ts';
import { EROFS_FEATURE_COMPAT_SB_CHKSUM, EROFS_SUPER_OFFSET, erofsSuperBlock, superBlockChecksum } from '../../../erofs/super.ts';
import { EROFS_DEVICE_TAG_SIZE, EROFS_DEVT_SLOT_SIZE, decodeTag, erofsDeviceSlot } from '../../../erofs/devtable.ts';

const readAt = (fd: number, buf: Buffer, position: number) => promisify(fs.read)(fd, buf, 0, buf.length, position);
const ENOENT = 2;
const EIO = 5;

function tagImage(bootstrap: string, tag: string): void {
  const img = fs.readFileSync(bootstrap);
  const sb = erofsSuperBlock.decode(img, EROFS_SUPER_OFFSET, bootstrap);
  if (sb.extra_devices < 1) throw new Error(`${bootstrap}: no device table (made without --blobdev?)`);
  const slotAt = sb.devt_slotoff * EROFS_DEVT_SLOT_SIZE;
  const raw = Buffer.from(tag, 'latin1');
  if (raw.length === 0 || raw.length > EROFS_DEVICE_TAG_SIZE) throw new Error(`tag of 1..${EROFS_DEVICE_TAG_SIZE} bytes`);
  erofsDeviceSlot.encodeInto(img, slotAt, { tag: raw });
  if (sb.feature_compat & EROFS_FEATURE_COMPAT_SB_CHKSUM) {
    img.writeUInt32LE(superBlockChecksum(img), EROFS_SUPER_OFFSET + erofsSuperBlock.offsetOf('checksum'));
  }
  fs.writeFileSync(bootstrap, img);
  const slot = erofsDeviceSlot.decode(img, slotAt);
  console.log(`${bootstrap}: device slot at ${slotAt} tagged '${decodeTag(slot.tag)}' (${slot.blocks} blocks), checksum ${sb.feature_compat & EROFS_FEATURE_COMPAT_SB_CHKSUM ? 'recomputed' : 'not used'}`);
}

interface CacheObject {
  name: string;
  anonFd: number;
  source: number;
  size: number;
}

interface Stats {
  opens: Array<{ volumeKey: string; cookieKey: string; size: number; cloexec: boolean }>;
  refused: string[];
  reads: number;
  readBytes: number;
  /** READs whose offset or length is not a multiple of 4096, the largest length, most READs in flight. */
  unalignedReads: number;
  maxReadLen: number;
  maxInFlight: number;
  closes: number;
  errors: string[];
  /** Per open object (cookie key): bytes its cache file holds, seen through the anonymous fd (SEEK_DATA). */
  held: Record<string, number>;
}

function isCloexec(fd: number): boolean {
  const flags = /flags:\s+(\d+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return flags !== null && (parseInt(flags[1], 8) & 0o2000000) !== 0;
}

function runDaemon(argv: string[]): void {
  const { values } = parseArgs({
    args: argv,
    options: {
      cache: { type: 'string' }, fsid: { type: 'string', multiple: true }, bootstrap: { type: 'string' },
      blob: { type: 'string', multiple: true }, ready: { type: 'string' }, stats: { type: 'string' },
      'read-delay-ms': { type: 'string' },
    },
  });
  const { cache, fsid: fsids, bootstrap, ready, stats: statsFile } = values;
  if (!cache || !fsids?.length || !bootstrap || !ready || !statsFile) throw new Error('daemon: --cache --fsid --bootstrap --ready --stats are required');
  // The cookie key names the object: the fsid for the bootstrap, a device slot's tag for a blob.
  // Several fsids may name the same image (each mount of another fsid starts from a cold cache).
  const files = new Map<string, string>(fsids.map((f) => [f, bootstrap]));
  for (const b of values.blob ?? []) {
    const eq = b.indexOf('=');
    files.set(b.slice(0, eq), b.slice(eq + 1));
  }

  const stats: Stats = {
    opens: [], refused: [], reads: 0, readBytes: 0, unalignedReads: 0, maxReadLen: 0, maxInFlight: 0, closes: 0, errors: [], held: {},
  };
  // Each READ is held this long before it is served, so that parallel readers surely overlap.
  const readDelayMs = Number(values['read-delay-ms'] ?? 0);
  const objects = new Map<number, CacheObject>();
  let inFlight = 0;
  const dev = CachefilesDevice.open(cache, 'smoke');

  const onOpen = (msg: Extract<CachefilesMessage, { type: 'open' }>) => {
    const volume = /^erofs,(.*)$/.exec(msg.volumeKey)?.[1];
    const file = volume !== undefined && fsids.includes(volume) ? files.get(msg.cookieKey) : undefined;
    if (file === undefined) {
      stats.refused.push(`${msg.volumeKey}/${msg.cookieKey}`);
      dev.closeFd(msg.fd);
      dev.copen(msg.msgId, -ENOENT);
      return;
    }
    const source = fs.openSync(file, 'r');
    const size = fs.fstatSync(source).size;
    objects.set(msg.objectId, { name: msg.cookieKey, anonFd: msg.fd, source, size });
    stats.opens.push({ volumeKey: msg.volumeKey, cookieKey: msg.cookieKey, size, cloexec: isCloexec(msg.fd) });
    dev.copen(msg.msgId, size);
  };

  const onRead = async (msg: Extract<CachefilesMessage, { type: 'read' }>) => {
    const obj = objects.get(msg.objectId);
    if (!obj) {
      stats.errors.push(`READ for unknown object ${msg.objectId}`);
      return;
    }
    if (msg.offset % CACHEFILES_WRITE_ALIGN || msg.len % CACHEFILES_WRITE_ALIGN) stats.unalignedReads++;
    stats.maxReadLen = Math.max(stats.maxReadLen, msg.len);
    stats.maxInFlight = Math.max(stats.maxInFlight, ++inFlight);
    try {
      if (readDelayMs) await new Promise((r) => setTimeout(r, readDelayMs));
      // Writes start on a block; the tail of the file is padded with zeros by writeData.
      const start = msg.offset - (msg.offset % CACHEFILES_WRITE_ALIGN);
      const end = Math.min(obj.size, msg.offset + msg.len);
      if (end > start) {
        const buf = Buffer.allocUnsafe(end - start);
        const { bytesRead } = await readAt(obj.source, buf, start);
        if (bytesRead !== buf.length) throw Object.assign(new Error(`short read of ${obj.name}`), { errno: EIO });
        await dev.writeData(obj.anonFd, start, buf);
        stats.readBytes += buf.length;
      }
      stats.reads++;
    } catch (err) {
      stats.errors.push(`READ ${obj.name} ${msg.offset}+${msg.len}: ${(err as Error).message}`);
    } finally {
      inFlight--;
      dev.readComplete(obj.anonFd, msg.msgId);
    }
  };

  const onClose = (msg: Extract<CachefilesMessage, { type: 'close' }>) => {
    const obj = objects.get(msg.objectId);
    if (!obj) return;
    objects.delete(msg.objectId);
    dev.closeFd(obj.anonFd);
    fs.closeSync(obj.source);
    stats.closes++;
  };

  dev.onMessage(
    (msg) => {
      if (msg.type === 'open') onOpen(msg);
      else if (msg.type === 'read') void onRead(msg);
      else onClose(msg);
    },
    (err) => stats.errors.push(err.message),
  );

  const dumpStats = () => {
    for (const obj of objects.values()) {
      try {
        stats.held[obj.name] = dev.dataRanges(obj.anonFd, 0, obj.size).reduce((n, [s, e]) => n + e - s, 0);
      } catch (err) {
        stats.errors.push(`dataRanges of ${obj.name}: ${(err as Error).message}`);
      }
    }
    fs.writeFileSync(statsFile, JSON.stringify(stats, null, 1) + '\n');
  };
  process.on('SIGUSR1', dumpStats);
  process.on('SIGTERM', () => {
    dumpStats();
    for (const obj of objects.values()) {
      dev.closeFd(obj.anonFd);
      fs.closeSync(obj.source);
    }
    dev.close();
    process.exit(0);
  });
  fs.writeFileSync(ready, `${process.pid}\n`);
}

const [command, ...rest] = process.argv.slice(2);
if (command === 'tag' && rest.length === 2) tagImage(rest[0], rest[1]);
else if (command === 'daemon') runDaemon(rest);
else {
  console.error('usage: ondemand-smoke.ts tag <bootstrap> <tag> | daemon --cache D --fsid F --bootstrap B --blob TAG=FILE --ready R --stats S');
  process.exit(2);
}
