/**
 * Stack traces that name the TypeScript sources (src/...ts:line:col) when a command runs from its
 * bundle, at no cost to its start. Node's --enable-source-maps reads a bundle's map and indexes every
 * line of the bundle as it loads it (50 ms of nydusd's start, growing with the bundle); this reads
 * the map the first time a stack with a frame in that bundle is formatted. Imported first by every
 * entry point. Under a loader that maps sources itself (tsx while developing, or node with
 * --enable-source-maps) it does nothing.
 */
import fs from 'node:fs';
import { SourceMap } from 'node:module';
import { fileURLToPath } from 'node:url';

const maps = new Map<string, SourceMap | null>();

/** The map next to a bundle (`<file>.map`), or null for a file without one (node's, a package's). */
function mapOf(file: string): SourceMap | null {
  let map = maps.get(file);
  if (map === undefined) {
    map = null;
    if (file.startsWith('file://')) {
      try {
        const mapUrl = `${file}.map`;
        const payload = JSON.parse(fs.readFileSync(fileURLToPath(mapUrl), 'utf8'));
        // Sources are named relative to the map, as node's own mapping resolves them.
        payload.sources = payload.sources.map((s: string) => new URL(`${payload.sourceRoot ?? ''}${s}`, mapUrl).href);
        map = new SourceMap(payload);
      } catch {
        // No map: the frame stays as V8 wrote it.
      }
    }
    maps.set(file, map);
  }
  return map;
}

/** V8's text of a frame with its bundle position replaced by the source position. */
function frameText(site: NodeJS.CallSite): string {
  const text = String(site);
  const file = site.getFileName();
  const line = site.getLineNumber();
  const column = site.getColumnNumber();
  if (!file || line === null || column === null) return text;
  const map = mapOf(file);
  const entry = map?.findEntry(line - 1, column - 1);
  if (!entry || !('originalSource' in entry)) return text;
  const source = entry.originalSource.startsWith('file://') ? fileURLToPath(entry.originalSource) : entry.originalSource;
  const at = `${file}:${line}:${column}`;
  const i = text.lastIndexOf(at);
  return i < 0 ? text : `${text.slice(0, i)}${source}:${entry.originalLine + 1}:${entry.originalColumn + 1}${text.slice(i + at.length)}`;
}

if (!process.sourceMapsEnabled) {
  const nodeFormat = Error.prepareStackTrace;
  Error.prepareStackTrace = (error, sites) => {
    // Node's own first line (it adds `[code]` to its errors' names).
    const head = nodeFormat ? nodeFormat(error, []) : String(error);
    return head + sites.map((s) => `\n    at ${frameText(s)}`).join('');
  };
}
