/**
 * A fast path for a command's plain argument lists, before yargs: loading yargs and parsing with it
 * is about a third of nydusd's start (its modules, cliui's string widths, the help text it renders
 * whenever a named command runs). The same option table feeds both; this path takes only what it
 * reads exactly as yargs would (known options, each at most once, valid values) and answers
 * undefined for anything else (help, version, unknown or repeated options, bad values, positionals),
 * which the caller then hands to yargs for its full behaviour and its error messages.
 */
import { parseArgs } from 'node:util';
import type { InferredOptionTypes, Options } from 'yargs';

/** The subset of yargs' option fields the fast path understands; others make it decline. */
export type QuickOption = Pick<Options, 'alias' | 'type' | 'default' | 'describe' | 'choices'>;

export function quickParse<O extends Record<string, QuickOption>>(
  argv: string[], options: O, commands: readonly string[] = [],
): InferredOptionTypes<O> | undefined {
  const spec: NonNullable<Parameters<typeof parseArgs>[0]>['options'] = {};
  for (const [name, o] of Object.entries(options)) {
    if (o.type !== 'string' && o.type !== 'boolean' && o.type !== 'number') return undefined;
    if (o.alias !== undefined && (typeof o.alias !== 'string' || o.alias.length !== 1)) return undefined;
    spec[name] = { type: o.type === 'boolean' ? 'boolean' : 'string', ...(o.alias ? { short: o.alias } : {}) };
  }
  let parsed: ReturnType<typeof parseArgs<{ options: typeof spec; strict: true; allowPositionals: true; tokens: true }>>;
  try {
    parsed = parseArgs({ args: argv, options: spec, strict: true, allowPositionals: true, tokens: true });
  } catch {
    return undefined;
  }
  // A command name first at most; yargs alone knows what else a positional may mean.
  const positionals = parsed.tokens.filter((t) => t.kind !== 'option');
  if (positionals.length > 1 || (positionals.length === 1 && (positionals[0].kind !== 'positional' || positionals[0].index !== 0 || !commands.includes(positionals[0].value)))) {
    return undefined;
  }
  const seen = new Set<string>();
  for (const t of parsed.tokens) {
    if (t.kind !== 'option') continue;
    if (seen.has(t.name)) return undefined; // yargs makes repeated options arrays
    seen.add(t.name);
  }
  const out: Record<string, unknown> = {};
  for (const [name, o] of Object.entries(options)) {
    const given = parsed.values[name];
    let v: unknown = given ?? o.default;
    if (given !== undefined && o.type === 'number') {
      // yargs' numbers: decimal or 0x hex; anything else (NaN, '') is its to judge.
      if (!/^(?:-?\d+(?:\.\d+)?|0x[0-9a-f]+)$/i.test(given as string)) return undefined;
      v = Number(given);
    }
    if (given !== undefined && o.choices && !(o.choices as readonly unknown[]).includes(v)) return undefined;
    if (v !== undefined) out[name] = v;
  }
  return out as InferredOptionTypes<O>;
}
