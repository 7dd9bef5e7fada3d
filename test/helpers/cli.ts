/** Runs the project's CLIs the way a user does: bin/<name> from the checkout. */
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(name: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): CliResult {
  const r = spawnSync(path.join(repoRoot, 'bin', name), args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 300_000, maxBuffer: 1 << 30, input: opts.input });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function mustRun(name: string, args: string[], opts: { input?: string } = {}): CliResult {
  const r = runCli(name, args, opts);
  if (r.status !== 0) throw new Error(`${name} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r;
}
