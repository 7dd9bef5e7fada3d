/**
 * The fuzzer's seeds and every case that ever failed it (test/fuzz/regressions.json), plus a fixed
 * sample of its cases: each must be accepted or refused with a NydusError, quickly (`npm run fuzz`
 * runs 100,000 of them).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tmpDir } from './helpers/fixtures.ts';
import { type CaseRunner, type FuzzCase, type Seed, buildSeeds, caseRunner, makeCase } from './fuzz/cases.ts';

const work = tmpDir('fuzz-regressions');
const kept: FuzzCase[] = JSON.parse(fs.readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), 'fuzz/regressions.json'), 'utf8'));
let seeds: Seed[];
let runner: CaseRunner;

before(() => {
  seeds = buildSeeds(work);
  runner = caseRunner(work, seeds);
});

after(() => {
  runner.close();
  fs.rmSync(work, { recursive: true, force: true });
});

async function timed(c: FuzzCase): Promise<string> {
  const t0 = Date.now();
  const outcome = await runner.run(c);
  assert.ok(Date.now() - t0 < 5000, `${JSON.stringify(c)} took ${Date.now() - t0} ms`);
  return outcome;
}

test('the seeds are valid images every reader accepts', async () => {
  for (const s of seeds) assert.equal(await timed({ seed: s.name, mutations: [] }), 'accepted', s.name);
});

test('every case that ever failed the fuzzer', async () => {
  for (const c of kept) await timed(c);
});

test('a fixed sample of 300 fuzz cases', async () => {
  const outcomes = new Map<string, number>();
  for (let i = 0; i < 300; i++) {
    const o = await timed(makeCase(seeds, i));
    outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
  }
  assert.ok((outcomes.get('accepted') ?? 0) > 10 && (outcomes.get('refused') ?? 0) > 10, `the sample covers both outcomes: ${[...outcomes]}`);
});
