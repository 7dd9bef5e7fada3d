/**
 * The tail of a Nydus blob with inlined metadata (nydus-image create --blob-inline-meta, --features
 * blob-toc; nydus storage/src/meta/toc.rs, builder/src/core/blob.rs): sections, each followed (not
 * preceded) by a GNU tar header naming it and giving its size, so that a reader walks them from the
 * blob's end (nydus-snapshotter's converter, seekFileByTarHeader):
 *
 *   chunk data | hdr(image.blob) | chunk-info array, blob meta header | hdr(blob.meta)
 *     | chunk digests | hdr(blob.digest) | bootstrap | hdr(image.boot) | TOC entries | hdr(rafs.blob.toc)
 *
 * The TOC (blob-toc only) lists every section, blob.meta.header too, with its offset, sizes, sha256 and
 * compression (the bootstrap's is zstd). Without blob-toc there is no digest array and no TOC, and the
 * bootstrap is stored uncompressed.
 */
import { Struct } from './struct.ts';

export const TOC_ENTRY_BLOB_RAW = 'image.blob';
export const TOC_ENTRY_BOOTSTRAP = 'image.boot';
export const TOC_ENTRY_BLOB_META = 'blob.meta';
export const TOC_ENTRY_BLOB_META_HEADER = 'blob.meta.header';
export const TOC_ENTRY_BLOB_DIGEST = 'blob.digest';
export const TOC_ENTRY_BLOB_TOC = 'rafs.blob.toc';

/** TocEntryFlags: how an entry's data is compressed. */
export const TOC_COMPRESSION_NONE = 0x1;
export const TOC_COMPRESSION_ZSTD = 0x2;

/** The blob id a bootstrap inlined in its blob gives that blob: its real id, the digest of the whole blob, is not known yet. */
export const INLINED_BLOB_ID_PLACEHOLDER = 'x'.repeat(64);

/** TocEntry, 128 bytes, little-endian. */
export const tocEntry = new Struct('toc_entry', 128, {
  flags: { offset: 0, type: 'u32' }, // TOC_COMPRESSION_*
  reserved1: { offset: 4, type: 'u32' },
  name: { offset: 8, type: { bytes: 16 } }, // NUL-padded
  uncompressed_digest: { offset: 24, type: { bytes: 32 } }, // sha256 of the uncompressed data
  compressed_offset: { offset: 56, type: 'u64' },
  compressed_size: { offset: 64, type: 'u64' },
  uncompressed_size: { offset: 72, type: 'u64' },
  reserved2: { offset: 80, type: { bytes: 48 } },
});

const SECTION_HEADER_SIZE = 512;
/** Where the fields a section header uses lie in a GNU tar header. */
const TAR_NAME = { offset: 0, size: 100 };
const TAR_SIZE = { offset: 124, size: 12 };
const TAR_CHKSUM = { offset: 148, size: 8 };
const TAR_TYPEFLAG = 156;
const TAR_MAGIC = { offset: 257, value: 'ustar  \0' }; // GNU: "ustar " and version " \0"
const TAR_REGULAR = 0x30; // '0'

/** `v` in octal, zero-padded, in all but the field's last byte (a NUL), as the Rust tar crate writes numbers. */
function octalField(h: Buffer, at: number, size: number, v: number): void {
  const digits = v.toString(8);
  if (digits.length > size - 1) throw new Error(`${v} does not fit a ${size}-byte tar field`);
  h.write(digits.padStart(size - 1, '0'), at, 'latin1');
}

function checksum(h: Buffer): number {
  let sum = 0;
  for (let i = 0; i < SECTION_HEADER_SIZE; i++) sum += i >= TAR_CHKSUM.offset && i < TAR_CHKSUM.offset + TAR_CHKSUM.size ? 0x20 : h[i];
  return sum;
}

/** The tar header that follows a section's `size` bytes, named `name`: what nydus-image writes (a GNU header, regular file, nothing else set). */
export function encodeSectionHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(SECTION_HEADER_SIZE);
  if (Buffer.byteLength(name) > TAR_NAME.size) throw new Error(`section name ${name} is too long`);
  h.write(name, TAR_NAME.offset, 'latin1');
  octalField(h, TAR_SIZE.offset, TAR_SIZE.size, size);
  h[TAR_TYPEFLAG] = TAR_REGULAR;
  h.write(TAR_MAGIC.value, TAR_MAGIC.offset, 'latin1');
  octalField(h, TAR_CHKSUM.offset, TAR_CHKSUM.size, checksum(h));
  return h;
}

export interface TocEntry {
  name: string;
  compression: 'none' | 'zstd';
  /** sha256 of the uncompressed data. */
  digest: Buffer;
  offset: number;
  compressedSize: number;
  uncompressedSize: number;
}

export function encodeTocEntry(e: TocEntry): Buffer {
  const name = Buffer.alloc(16);
  if (Buffer.byteLength(e.name) > 16) throw new Error(`TOC entry name ${e.name} is too long`);
  name.write(e.name, 'latin1');
  return tocEntry.encode({
    flags: e.compression === 'zstd' ? TOC_COMPRESSION_ZSTD : TOC_COMPRESSION_NONE, reserved1: 0, name, uncompressed_digest: e.digest,
    compressed_offset: e.offset, compressed_size: e.compressedSize, uncompressed_size: e.uncompressedSize, reserved2: Buffer.alloc(48),
  });
}
