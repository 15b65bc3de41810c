/**
 * llama.cpp's block writers: Q4_K and Q6_K against llama.cpp's own reference quantizers
 * (test/fixtures/kquants.json, made by ggml-quants.c's quantize_row_q4_K_ref / _q6_K_ref built with
 * strict float32 arithmetic), Q5_0 against gguf-py's port of quantize_row_q5_0_ref, the importance
 * paths against quantize_q*_impl (kquants-imatrix.json, Q4_0 included), Q5_1 and Q5_K against quantize_q5_1 /
 * quantize_q5_K on both paths (kquants-q5.json), Q2_K and Q3_K against quantize_q2_K / quantize_q3_K and
 * their dequantizers on both paths (kquants-q23.json).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import {
  dequantizeQ2_K,
  dequantizeQ3_K,
  dequantizeQ4_K,
  dequantizeQ5_0,
  dequantizeQ5_1,
  dequantizeQ5_K,
  dequantizeQ6_K,
  quantizeQ4_0,
  quantizeQ5_0,
  quantizeQ5_1,
} from '../src/formats/ggml.ts';
import {
  quantizeQ2_K,
  quantizeQ3_K,
  quantizeQ4_K,
  quantizeQ5_K,
  quantizeQ6_K,
} from '../src/formats/kquants.ts';
import { bytes, firstBadBlock, floats } from './block-fixtures.ts';

interface KCase {
  name: string;
  input: string;
  q4_K: string;
  q6_K: string;
  q4_K_values: string;
  q6_K_values: string;
}

const fixture = JSON.parse(fs.readFileSync('test/fixtures/kquants.json', 'utf8')) as { cases: KCase[] };

test('Q4_K and Q6_K blocks equal llama.cpp reference quantizers byte for byte', () => {
  assert.ok(fixture.cases.length >= 6);
  for (const c of fixture.cases) {
    const x = floats(c.input);
    const q4 = quantizeQ4_K(x);
    assert.equal(firstBadBlock(q4, bytes(c.q4_K), 144), -1, `${c.name}: Q4_K block`);
    assert.deepEqual(q4, bytes(c.q4_K), c.name);
    assert.deepEqual(dequantizeQ4_K(q4), floats(c.q4_K_values), `${c.name}: Q4_K values`);
    const q6 = quantizeQ6_K(x);
    assert.equal(firstBadBlock(q6, bytes(c.q6_K), 210), -1, `${c.name}: Q6_K block`);
    assert.deepEqual(dequantizeQ6_K(q6), floats(c.q6_K_values), `${c.name}: Q6_K values`);
  }
});

test('Q4_K and Q6_K refuse lengths that are not whole super-blocks', () => {
  assert.throws(() => quantizeQ4_K(new Float32Array(128)), /Q4_K needs a multiple of 256/);
  assert.throws(() => quantizeQ6_K(new Float32Array(300)), /Q6_K needs a multiple of 256/);
});

test('Q5_0 blocks equal gguf-py 0.19.0 quantize (llama.cpp quantize_row_q5_0_ref)', () => {
  const f = JSON.parse(fs.readFileSync('test/fixtures/ggml-q5_0.json', 'utf8'));
  const x = floats(f.input_f32le);
  const got = quantizeQ5_0(x);
  assert.deepEqual(got, bytes(f.q5_0));
  // and back: within half a step of the block's scale
  const y = dequantizeQ5_0(got);
  for (let b = 0; b < x.length / 32; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[32 * b + j]));
    for (let j = 0; j < 32; j++)
      assert.ok(Math.abs(y[32 * b + j] - x[32 * b + j]) <= (amax / 16) * 0.5 * 1.002 + 1e-9, `block ${b}`);
  }
});

interface ImatrixCase {
  name: string;
  rows: number;
  cols: number;
  input: string;
  importance: string;
  q4_K: string;
  q6_K: string;
  q5_0: string;
  q4_0: string;
}

test('with an importance matrix, Q4_K, Q6_K, Q5_0 and Q4_0 equal llama.cpp (quantize_q*_impl) byte for byte', () => {
  const f = JSON.parse(fs.readFileSync('test/fixtures/kquants-imatrix.json', 'utf8')) as {
    cases: ImatrixCase[];
  };
  assert.ok(f.cases.length >= 5);
  for (const c of f.cases) {
    const x = floats(c.input);
    const importance = floats(c.importance);
    const imatrix = { importance, cols: c.cols };
    const q4 = quantizeQ4_K(x, imatrix);
    assert.equal(firstBadBlock(q4, bytes(c.q4_K), 144), -1, `${c.name}: Q4_K block`);
    const q6 = quantizeQ6_K(x, imatrix);
    assert.equal(firstBadBlock(q6, bytes(c.q6_K), 210), -1, `${c.name}: Q6_K block`);
    const q5 = quantizeQ5_0(x, imatrix);
    assert.equal(firstBadBlock(q5, bytes(c.q5_0), 22), -1, `${c.name}: Q5_0 block`);
    const q40 = quantizeQ4_0(x, imatrix);
    assert.equal(firstBadBlock(q40, bytes(c.q4_0), 18), -1, `${c.name}: Q4_0 block`);
    // the importance path is another quantizer: it picks other blocks than the reference path
    if (c.name === 'normal_0.02') {
      assert.notDeepEqual(q4, quantizeQ4_K(x), 'imatrix changes Q4_K');
      assert.notDeepEqual(q40, quantizeQ4_0(x), 'imatrix changes Q4_0');
    }
  }
});

interface Q5Case {
  name: string;
  cols: number;
  input: string;
  importance?: string;
  q5_1: string;
  q5_K: string;
}

test('Q5_1 and Q5_K equal llama.cpp (quantize_q5_1 / quantize_q5_K) byte for byte, with and without importance', () => {
  const f = JSON.parse(fs.readFileSync('test/fixtures/kquants-q5.json', 'utf8')) as { cases: Q5Case[] };
  assert.ok(
    f.cases.filter((c) => c.importance).length >= 5 && f.cases.filter((c) => !c.importance).length >= 8,
  );
  for (const c of f.cases) {
    const x = floats(c.input);
    const imatrix = c.importance ? { importance: floats(c.importance), cols: c.cols } : undefined;
    const q51 = quantizeQ5_1(x, imatrix);
    assert.equal(firstBadBlock(q51, bytes(c.q5_1), 24), -1, `${c.name}: Q5_1 block`);
    const q5k = quantizeQ5_K(x, imatrix);
    assert.equal(firstBadBlock(q5k, bytes(c.q5_K), 176), -1, `${c.name}: Q5_K block`);
    if (!imatrix) continue;
    // the importance path picks other blocks than the reference path on ordinary weights
    if (c.name === 'imatrix_normal_0.02') assert.notDeepEqual(q5k, quantizeQ5_K(x));
  }
});

test('Q5_K and Q5_1 decode within one step (range / 31) of their input', () => {
  const f = JSON.parse(fs.readFileSync('test/fixtures/kquants-q5.json', 'utf8')) as { cases: Q5Case[] };
  const x = floats(f.cases.find((c) => c.name === 'normal_0.02_4sb')!.input);
  for (const [name, y, block] of [
    ['Q5_1', dequantizeQ5_1(quantizeQ5_1(x)), 32],
    ['Q5_K', dequantizeQ5_K(quantizeQ5_K(x)), 256],
  ] as const) {
    for (let b = 0; b < x.length / block; b++) {
      const slice = x.subarray(b * block, (b + 1) * block);
      const range = Math.max(...slice) - Math.min(...slice, 0);
      for (let i = b * block; i < (b + 1) * block; i++)
        assert.ok(Math.abs(y[i] - x[i]) <= range / 31, `${name} value ${i}: ${y[i]} vs ${x[i]}`);
    }
  }
});

interface Q23Case {
  name: string;
  cols: number;
  input: string;
  importance?: string;
  q2_K: string;
  q3_K: string;
  q2_K_values: string;
  q3_K_values: string;
}

test('Q2_K and Q3_K equal llama.cpp (quantize_q2_K / quantize_q3_K) byte for byte and decode as its dequantizers', () => {
  const f = JSON.parse(fs.readFileSync('test/fixtures/kquants-q23.json', 'utf8')) as { cases: Q23Case[] };
  assert.ok(
    f.cases.filter((c) => c.importance).length >= 5 && f.cases.filter((c) => !c.importance).length >= 8,
  );
  for (const c of f.cases) {
    const x = floats(c.input);
    const imatrix = c.importance ? { importance: floats(c.importance), cols: c.cols } : undefined;
    const q2 = quantizeQ2_K(x, imatrix);
    assert.equal(firstBadBlock(q2, bytes(c.q2_K), 84), -1, `${c.name}: Q2_K block`);
    const q3 = quantizeQ3_K(x, imatrix);
    assert.equal(firstBadBlock(q3, bytes(c.q3_K), 110), -1, `${c.name}: Q3_K block`);
    assert.deepEqual(dequantizeQ2_K(bytes(c.q2_K)), floats(c.q2_K_values), `${c.name}: Q2_K values`);
    assert.deepEqual(dequantizeQ3_K(bytes(c.q3_K)), floats(c.q3_K_values), `${c.name}: Q3_K values`);
    if (c.name === 'imatrix_normal_0.02') {
      assert.notDeepEqual(q2, quantizeQ2_K(x), 'imatrix changes Q2_K');
      assert.notDeepEqual(q3, quantizeQ3_K(x), 'imatrix changes Q3_K');
    }
  }
});
