/**
 * The shape of what a registry serves, checked where it is parsed: every manifest and index goes
 * through checkManifestShape (from getManifest), every image config through parseImageConfig, so
 * no reader downstream meets a missing `layers`, a `null` descriptor, a size that is a string, or a
 * digest that is not one. Each refusal names the field (`layers[2].size`) and what it holds.
 */
import { isImageManifestType, isIndexType } from './media-types.ts';

/** Most entries an index may have (a real one has a few platforms and their attestations). */
export const MAX_INDEX_ENTRIES = 1024;

/**
 * Deepest nesting accepted in an image config, manifest or index. Real ones nest 4 or 5 levels;
 * JSON.stringify, which writes the converted documents, runs out of stack some thousands of levels down.
 */
export const MAX_JSON_DEPTH = 256;

/**
 * Most bytes the image manifests an index is resolved to may have together (resolveImage): each is
 * held, parsed, until the conversion ends. Real indexes list a few manifests of some KiB.
 */
export const MAX_RESOLVED_MANIFEST_BYTES = 16 << 20;

const SHA256 = /^sha256:[a-f0-9]{64}$/;

/** A value as an error message shows it: short, never a whole (maybe huge or deep) object. */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? `${v.slice(0, 80)}...` : v);
  return String(v);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A shape error: `field` is the JSON path (`layers[0].digest`), `what` the problem. */
export class ShapeError extends Error {
  constructor(readonly field: string, readonly what: string) {
    super(`${field} ${what}`);
  }
}

function checkStringMap(v: unknown, field: string): void {
  if (v === undefined) return;
  if (!isPlainObject(v)) throw new ShapeError(field, `is ${describeValue(v)}, not an object of strings`);
  for (const [k, x] of Object.entries(v)) {
    if (typeof x !== 'string') throw new ShapeError(`${field}[${JSON.stringify(k.slice(0, 80))}]`, `is ${describeValue(x)}, not a string`);
  }
}

/** A descriptor: mediaType a string, digest sha256:<64 hex>, size an integer >= 0 (and optional fields of their types). */
export function checkDescriptor(v: unknown, field: string): void {
  if (!isPlainObject(v)) throw new ShapeError(field, `is ${describeValue(v)}, not a descriptor object`);
  if (typeof v.mediaType !== 'string') throw new ShapeError(`${field}.mediaType`, v.mediaType === undefined ? 'is missing' : `is ${describeValue(v.mediaType)}, not a string`);
  if (typeof v.digest !== 'string') throw new ShapeError(`${field}.digest`, v.digest === undefined ? 'is missing' : `is ${describeValue(v.digest)}, not a string`);
  if (!SHA256.test(v.digest)) throw new ShapeError(`${field}.digest`, `${describeValue(v.digest)} is not a sha256 digest (sha256:<64 lowercase hex>)`);
  if (typeof v.size !== 'number' || !Number.isSafeInteger(v.size) || v.size < 0) {
    throw new ShapeError(`${field}.size`, v.size === undefined ? 'is missing' : `is ${describeValue(v.size)}, not an integer >= 0`);
  }
  if (v.urls !== undefined && (!Array.isArray(v.urls) || v.urls.some((u) => typeof u !== 'string'))) throw new ShapeError(`${field}.urls`, 'is not an array of strings');
  checkStringMap(v.annotations, `${field}.annotations`);
  if (v.artifactType !== undefined && typeof v.artifactType !== 'string') throw new ShapeError(`${field}.artifactType`, `is ${describeValue(v.artifactType)}, not a string`);
  if (v.platform !== undefined) {
    const p = v.platform;
    if (!isPlainObject(p)) throw new ShapeError(`${field}.platform`, `is ${describeValue(p)}, not an object`);
    for (const k of ['os', 'architecture'] as const) {
      if (typeof p[k] !== 'string') throw new ShapeError(`${field}.platform.${k}`, p[k] === undefined ? 'is missing' : `is ${describeValue(p[k])}, not a string`);
    }
    for (const k of ['variant', 'os.version'] as const) {
      if (p[k] !== undefined && typeof p[k] !== 'string') throw new ShapeError(`${field}.platform.${k}`, `is ${describeValue(p[k])}, not a string`);
    }
    const f = p['os.features'];
    if (f !== undefined && (!Array.isArray(f) || f.some((x) => typeof x !== 'string'))) throw new ShapeError(`${field}.platform.os.features`, 'is not an array of strings');
  }
}

/**
 * Checks a parsed manifest or index against its media type (the one it declares, else the
 * Content-Type): schemaVersion 2, its descriptors well formed, no fields of the other kind (as
 * containerd's validateMediaType). Returns the media type.
 */
export function checkManifestShape(json: unknown, contentType: string | undefined): string {
  if (!isPlainObject(json)) throw new ShapeError('the document', `is ${describeValue(json)}, not a JSON object`);
  if (json.mediaType !== undefined && typeof json.mediaType !== 'string') throw new ShapeError('mediaType', `is ${describeValue(json.mediaType)}, not a string`);
  const mediaType = (json.mediaType as string | undefined) ?? contentType ?? '';
  if (json.schemaVersion !== 2 || !(isImageManifestType(mediaType) || isIndexType(mediaType))) {
    throw new ShapeError('the document', `is not a supported manifest (schemaVersion ${describeValue(json.schemaVersion)}, media type ${describeValue(mediaType)})`);
  }
  checkStringMap(json.annotations, 'annotations');
  if (json.subject !== undefined) checkDescriptor(json.subject, 'subject');
  if (isImageManifestType(mediaType)) {
    if (json.manifests !== undefined) throw new ShapeError('manifests', `is there: an image manifest (${mediaType}) has none`);
    if (json.config === undefined) throw new ShapeError('config', 'is missing');
    checkDescriptor(json.config, 'config');
    if (!Array.isArray(json.layers)) throw new ShapeError('layers', json.layers === undefined ? 'is missing' : `is ${describeValue(json.layers)}, not an array`);
    json.layers.forEach((l, i) => checkDescriptor(l, `layers[${i}]`));
  } else {
    if (json.config !== undefined || json.layers !== undefined) throw new ShapeError(json.config !== undefined ? 'config' : 'layers', `is there: an index (${mediaType}) has none`);
    if (!Array.isArray(json.manifests)) throw new ShapeError('manifests', json.manifests === undefined ? 'is missing' : `is ${describeValue(json.manifests)}, not an array`);
    if (json.manifests.length > MAX_INDEX_ENTRIES) throw new ShapeError('manifests', `has ${json.manifests.length} entries, more than ${MAX_INDEX_ENTRIES}`);
    json.manifests.forEach((d, i) => checkDescriptor(d, `manifests[${i}]`));
  }
  return mediaType;
}

/** Depth of the deepest array or object in JSON text (strings skipped), stopping once past `max`. */
export function jsonDepth(bytes: Uint8Array, max: number): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > deepest) {
        deepest = depth;
        if (deepest > max) return deepest;
      }
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return deepest;
}

/**
 * An image config's bytes as a JSON object: text that is not JSON, nests deeper than
 * MAX_JSON_DEPTH, or is not an object (an array, null, a number) is a ShapeError.
 */
export function parseImageConfig(bytes: Buffer): Record<string, unknown> {
  if (jsonDepth(bytes, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) throw new ShapeError('the config', `nests deeper than ${MAX_JSON_DEPTH} levels`);
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw new ShapeError('the config', `is not JSON: ${(e as Error).message.slice(0, 200)}`);
  }
  if (!isPlainObject(json)) throw new ShapeError('the config', `is ${describeValue(json)}, not a JSON object`);
  for (const k of ['rootfs', 'config'] as const) {
    if (json[k] !== undefined && json[k] !== null && !isPlainObject(json[k])) throw new ShapeError(k, `is ${describeValue(json[k])}, not an object`);
  }
  if (json.history !== undefined && json.history !== null && !Array.isArray(json.history)) throw new ShapeError('history', `is ${describeValue(json.history)}, not an array`);
  return json;
}
