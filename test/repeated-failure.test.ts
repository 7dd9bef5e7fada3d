/** RepeatedFailure(s): a failure that keeps happening is told at once, then once per interval with how many were held back. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RepeatedFailure, RepeatedFailures } from '../src/daemon/repeated-failure.ts';

test('repeated failure: told at once, then once per interval with the count held back; recover() tells whether it had been told', () => {
  let now = 1_000;
  const f = new RepeatedFailure(60_000, () => now);
  assert.equal(f.recover(), false, 'nothing told yet: its end is no news');
  assert.deepEqual(f.occur(), { held: 0 });
  for (let i = 0; i < 500; i++) {
    now += 100;
    assert.equal(f.occur(), null);
  }
  now = 1_000 + 60_000;
  assert.deepEqual(f.occur(), { held: 500 }, 'told again a minute after, with the ones held back');
  assert.equal(f.occur(), null);
  assert.equal(f.recover(), true);
  assert.deepEqual(f.occur(), { held: 0 }, 'after recovering, the next one is told at once');
});

test('repeated failures: each key on its own; past maxKeys the oldest key is forgotten', () => {
  let now = 0;
  const fs = new RepeatedFailures(60_000, 2, () => now);
  assert.deepEqual(fs.occur('a'), { held: 0 });
  assert.deepEqual(fs.occur('b'), { held: 0 }, 'another key is told too');
  assert.equal(fs.occur('a'), null);
  assert.equal(fs.occur('b'), null);
  assert.deepEqual(fs.occur('c'), { held: 0 });
  assert.deepEqual(fs.occur('a'), { held: 0 }, 'a was forgotten when c came: told again');
  now += 60_000;
  assert.deepEqual(fs.occur('c'), { held: 0 });
});
