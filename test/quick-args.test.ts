/**
 * nydusd's fast argument path (src/cli/quick-args.ts) against yargs itself, the oracle: whatever the
 * fast path accepts it reads exactly as yargs does, and whatever it cannot read so it declines.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { quickParse } from '../src/cli/quick-args.ts';
import { cliParser } from '../src/cli/main.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const OPTIONS = {
  dir: { alias: 'F', type: 'string', describe: 'a directory' },
  tag: { type: 'string', default: 'nydus' },
  threads: { type: 'number', default: 4 },
  size: { type: 'number' },
  level: { alias: 'l', type: 'string', default: 'info', choices: ['debug', 'info', 'warn'] },
  upgrade: { type: 'boolean', default: false },
} as const;

async function yargsParse(argv: string[]): Promise<Record<string, unknown>> {
  return await cliParser('t', argv).command(['run', '$0'], 'run').options(OPTIONS).help().parseAsync() as Record<string, unknown>;
}

test('what the fast path accepts, it reads as yargs does (defaults, aliases, numbers, booleans, the command)', async () => {
  const accepted = [
    [],
    ['run'],
    ['run', '--dir', '/a b', '--threads', '8', '--upgrade'],
    ['--dir=/x', '-l', 'warn', '--size', '0x10'],
    ['-F', '/y', '--tag', '', '--size', '2.5', '--level=debug'],
    ['run', '-F/z', '--threads', '0'],
  ];
  for (const argv of accepted) {
    const quick = quickParse(argv, OPTIONS, ['run']);
    assert.ok(quick, `fast path declined ${JSON.stringify(argv)}`);
    const full = await yargsParse(argv);
    for (const key of Object.keys(OPTIONS)) assert.deepEqual(quick[key as keyof typeof OPTIONS], full[key], `${key} of ${JSON.stringify(argv)}`);
    assert.deepEqual(Object.keys(quick).sort(), Object.keys(OPTIONS).filter((k) => full[k] !== undefined).sort(), JSON.stringify(argv));
  }
});

test('what the fast path cannot read as yargs would, it leaves to yargs', () => {
  const declined = [
    ['--help'], ['-h'], ['--version'],
    ['--bogus'], ['other'], ['run', 'extra'], ['--dir', 'a', 'run'], ['--', '--dir'],
    ['--dir', 'a', '--dir', 'b'], ['-F', 'a', '--dir', 'b'],
    ['--no-upgrade'], ['--upgrade=true'], ['--upgrade', 'false'],
    ['--threads', 'many'], ['--threads', ''], ['--threads', '-1'], ['--threads', '1e3'],
    ['--level', 'loud'], ['--dir'], ['--dirName', 'x'],
  ];
  for (const argv of declined) assert.equal(quickParse(argv, OPTIONS, ['run']), undefined, JSON.stringify(argv));
});

test('nydusd: errors and help still come from yargs when the fast path declines', () => {
  const nydusd = (...args: string[]) => spawnSync(path.join(repo, 'bin/nydusd'), args, { encoding: 'utf8' });
  let r = nydusd('--log-level', 'loud', '--fscache', '/x', '--apisock', '/y');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^nydusd: error: Invalid values:\n {2}Argument: log-level, Given: "loud"/);
  r = nydusd('singleton', '--bogus');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /Unknown argument: bogus/);
  r = nydusd('--help');
  assert.equal(r.status, 0);
  assert.match(r.stdout, /--fscache-threads\s+concurrent requests served, 1 to 1024 \(default 4\)\s+\[string\]/);
  r = nydusd('--apisock', '/y');
  assert.equal(r.status, 1);
  assert.equal(r.stderr, 'nydusd: error: --fscache <dir> or --fanotify <dir> is required\n');
});

test('-h is --help for every command and subcommand, as clap gives nydus\'s tools (nydus-snapshotter reads `nydus-image create -h` for the flags it may pass)', () => {
  for (const [cmd, args, usage] of [
    ['nydus-image', ['create', '-h'], /--prefetch-policy/], ['nydus-image', ['-h'], /Commands:/], ['nydus-image', ['check', '-h'], /nydus-image check/],
    ['nydusd', ['-h'], /--fscache-threads/], ['nydusctl', ['-h'], /Commands:/], ['nydusctl', ['metrics', '-h'], /--interval/],
    ['nydusify', ['convert', '-h'], /--target/], ['nydus-backend-proxy', ['-h'], /--blobsdir/],
  ] as const) {
    const r = spawnSync(path.join(repo, 'bin', cmd), args, { encoding: 'utf8' });
    assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stdout, usage, `${cmd} ${args.join(' ')}`);
  }
});
