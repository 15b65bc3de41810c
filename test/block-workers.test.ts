/**
 * llama.cpp's block quantizers on worker threads (formats/block-workers.ts) give the bytes of one
 * thread, with and without an importance matrix, and encodeAsync / fakeQuantRowsAsync equal their
 * synchronous forms.
 */
import assert from 'node:assert/strict';
import os from 'node:os';
import { test } from 'node:test';
import { quantizeBlocksInParallel } from '../src/formats/block-workers.ts';
import { quantizeGgmlBlocks } from '../src/formats/ggml-codes.ts';
import { encode, encodeAsync, fakeQuantRows, fakeQuantRowsAsync, parseFormat } from '../src/formats/index.ts';
import { rng } from './helpers.ts';

const [rows, cols] = [600, 1024]; // 614400 values: above the threshold, rows not a multiple of the workers
const x = Float32Array.from(rng(3).normal(rows * cols), (v) => v * 0.02);
const importance = Float32Array.from(rng(4).normal(cols), (v) => Math.exp(v));
const multiCore = os.availableParallelism() >= 2 ? false : 'one core: no workers';

test('worker threads give the one-thread bytes for every block type', { skip: multiCore }, async () => {
  for (const type of ['q5_0', 'q5_1', 'q4_k', 'q5_k', 'q6_k'] as const) {
    const got = await quantizeBlocksInParallel(type, x, cols);
    assert.ok(got, `${type}: made on the workers`);
    assert.deepEqual(got, quantizeGgmlBlocks(x, cols, type), type);
  }
  const q4 = await quantizeBlocksInParallel('q4_k', x, cols, importance);
  assert.deepEqual(q4, quantizeGgmlBlocks(x, cols, 'q4_k', importance), 'q4_k with importance');
  assert.notDeepEqual(q4, quantizeGgmlBlocks(x, cols, 'q4_k'));
});

test('small weights and bad input stay on the calling thread', async () => {
  assert.equal(await quantizeBlocksInParallel('q4_k', x.subarray(0, 4 * 1024), 1024), undefined);
  const bad = x.slice();
  bad[300_000] = Number.NaN;
  // the workers refuse it; the caller then gets the one-line error of the in-line quantizer
  await assert.rejects(encodeAsync(bad, rows, cols, parseFormat('q4_k')), /finite values only/);
});

test('encodeAsync and fakeQuantRowsAsync equal encode and fakeQuantRows', async () => {
  const spec = parseFormat('q6_k');
  assert.deepEqual(await encodeAsync(x, rows, cols, spec), encode(x, rows, cols, spec));
  assert.deepEqual(await fakeQuantRowsAsync(x, rows, cols, spec), fakeQuantRows(x, rows, cols, spec));
  const int4 = parseFormat('int4-g128');
  assert.deepEqual(await encodeAsync(x, rows, cols, int4), encode(x, rows, cols, int4));
});
