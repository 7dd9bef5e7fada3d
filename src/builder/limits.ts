/**
 * The one check of a tree node against what the format can hold. Every source goes through it as it
 * makes a node, before reading any of its data: a layer tar's entries (source-tar.ts) and a
 * directory's files (source-dir.ts; chunkTree for the chunk count, which depends on the chunk size).
 * So nothing the format cannot hold reaches the layout and the writer, and a refusal names the entry.
 * The limits themselves are the format's, named in erofs/.
 */
import { BLOB_MAX_CHUNKS } from '../../erofs/blobmeta.ts';
import { EROFS_NAME_LEN } from '../../erofs/dirent.ts';
import { EROFS_ID_MAX, EROFS_NSEC_MAX, EROFS_PATH_MAX, EROFS_SYMLINK_MAX, rdevProblem } from '../../erofs/limits.ts';
import { xattrsProblem } from '../../erofs/xattr.ts';
import type { TreeNode } from './tree.ts';

/** A path for a message: JSON, cut short past 1 KiB (a hostile one may be megabytes). */
export function shownPath(p: Buffer): string {
  return p.length <= 1024 ? JSON.stringify(p.toString('utf8')) : `${JSON.stringify(p.subarray(0, 128).toString('utf8'))}... (${p.length} bytes)`;
}

/** Why a path longer than EROFS_PATH_MAX from the root is refused (said after the path). */
export const pathTooLong = `is longer than ${EROFS_PATH_MAX} bytes from the root (PATH_MAX - 1): no process could name it`;

/** Why one path component cannot be a name in a directory, or null. */
export function nameProblem(name: Buffer): string | null {
  if (name.length === 0) return 'a name is empty';
  if (name.length > EROFS_NAME_LEN) return `a name is longer than ${EROFS_NAME_LEN} bytes`;
  if (name.includes(0)) return 'a name holds a NUL byte';
  if (name.includes(0x2f)) return "a name holds a '/'";
  if (name[0] === 0x2e && (name.length === 1 || (name.length === 2 && name[1] === 0x2e))) return `a name is ${JSON.stringify(name.toString('latin1'))}`;
  return null;
}

/**
 * Chunk references all the files of one build may make (a chunk shared by many files, or a hole's
 * zero chunk, counts at each). Each is held while the image is built and written as an 8-byte index
 * of its file: a layer of a few KiB of sparse files of 2^24 chunks each (16 TiB at 1 MiB chunks)
 * held 1 GB apiece and ran the heap out at six. As many as a blob may hold chunks: 16 TiB of file
 * data at the default chunk size.
 */
export const IMAGE_MAX_CHUNK_REFS = BLOB_MAX_CHUNKS;

/**
 * Why a regular file of `size` bytes cannot be stored in chunks of `chunkSize`, or null: no file may
 * have more chunks than a blob may hold (nydus's RAFS_MAX_CHUNKS_PER_BLOB), nor all files together,
 * with the `refsBefore` made before it, more than IMAGE_MAX_CHUNK_REFS. Checked before its data is
 * read, so a huge sparse file costs nothing to refuse.
 */
export function fileChunksProblem(size: number, chunkSize: number, refsBefore: number): string | null {
  const chunks = Math.ceil(size / chunkSize);
  if (chunks > BLOB_MAX_CHUNKS) return `a file of ${size} bytes needs ${chunks} chunks of ${chunkSize} bytes, more than the ${BLOB_MAX_CHUNKS} a blob may hold`;
  if (refsBefore + chunks > IMAGE_MAX_CHUNK_REFS) {
    return `a file of ${size} bytes needs ${chunks} chunks of ${chunkSize} bytes, which with the ${refsBefore} of the files before it are more than the ${IMAGE_MAX_CHUNK_REFS} an image's files may refer to`;
  }
  return null;
}

function idProblem(what: string, id: number): string | null {
  if (Number.isSafeInteger(id) && id >= 0 && id <= EROFS_ID_MAX) return null;
  return `${what} ${id} does not fit EROFS's 32-bit i_${what} (at most ${EROFS_ID_MAX})`;
}

/**
 * Why the format cannot hold `node` as it is, or null: its name, owner, mtime, device number, symlink
 * target, size and xattrs (names, values, POSIX ACLs, and all of them inline). With `chunks` (the
 * chunk size, and the chunk references the build made before), a regular file's chunk count too.
 */
export function nodeProblem(node: TreeNode, chunks?: { chunkSize: number; refsBefore: number }): string | null {
  if (node.path !== '/') {
    const problem = nameProblem(node.name);
    if (problem) return problem;
  }
  const idError = idProblem('uid', node.uid) ?? idProblem('gid', node.gid);
  if (idError) return idError;
  // i_mtime is an i64: every safe integer fits.
  if (!Number.isSafeInteger(node.mtimeSec)) return `mtime ${node.mtimeSec} is out of range`;
  if (!Number.isInteger(node.mtimeNsec) || node.mtimeNsec < 0 || node.mtimeNsec > EROFS_NSEC_MAX) return `mtime nanoseconds ${node.mtimeNsec} are out of range`;
  switch (node.kind) {
    case 'chrdev':
    case 'blkdev': {
      const problem = rdevProblem(node.rdev);
      if (problem) return problem;
      break;
    }
    case 'symlink': {
      const target = node.target ?? Buffer.alloc(0);
      if (target.length === 0) return 'symlink with an empty target';
      if (target.length > EROFS_SYMLINK_MAX) return `symlink target of ${target.length} bytes is longer than ${EROFS_SYMLINK_MAX} (PATH_MAX - 1)`;
      if (target.includes(0)) return 'symlink target holds a NUL byte';
      break;
    }
    case 'file': {
      if (!Number.isSafeInteger(node.size) || node.size < 0) return `file size ${node.size} is out of range`;
      const problem = chunks && fileChunksProblem(node.size, chunks.chunkSize, chunks.refsBefore);
      if (problem) return problem;
      break;
    }
    default:
      break;
  }
  return xattrsProblem(node.xattrs);
}
