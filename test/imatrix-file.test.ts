/**
 * llama.cpp's importance-matrix files (io/imatrix-file.ts): the GGUF form llmq writes read back as
 * in_sum2 / counts, a legacy .dat built by hand here read as values / ncall, and a recipe step taking
 * its importance from such a file (no calibration) giving the blocks of llama.cpp's importance path.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { ggmlBlockBytes } from '../src/formats/ggml-codes.ts';
import { quantizeQ4_K } from '../src/formats/kquants.ts';
import { readImatrix, writeImatrix } from '../src/io/imatrix-file.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import '../src/quant/methods.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { defineRecipe, resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { MODELS, rng } from './helpers.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-imatrix-file-'));
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
const cpu = new CpuBackend();

test('an imatrix GGUF reads back as in_sum2 / counts, with its datasets and chunks', () => {
  const file = path.join(dir, 'm.gguf');
  const sums = Float32Array.of(3, 1, 0.5, 10);
  writeImatrix(
    file,
    [
      { name: 'blk.1.ffn_down.weight', sums, count: 3 },
      { name: 'blk.0.attn_q.weight', sums: Float32Array.of(2, 4), count: 0 },
    ],
    { datasets: ['brown.txt'], chunks: 7, chunkSize: 512 },
  );
  const m = readImatrix(file);
  assert.deepEqual(m.datasets, ['brown.txt']);
  assert.equal(m.chunks, 7);
  assert.deepEqual(
    m.importance.get('blk.1.ffn_down.weight'),
    sums.map((s) => Math.fround(s / 3)),
  );
  // a matrix that saw no token gets importance 1, as llama-quantize's loader gives it
  assert.deepEqual(m.importance.get('blk.0.attn_q.weight'), Float32Array.of(1, 1));
});

test("llama-imatrix's legacy .dat reads as values / ncall", () => {
  const name = Buffer.from('blk.0.attn_v.weight');
  const values = Float32Array.of(8, 2, 6); // mean x^2 times ncall = 2
  const dataset = Buffer.from('wiki.train.raw');
  const i32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    return b;
  };
  const bytes = Buffer.concat([
    i32(1),
    i32(name.length),
    name,
    i32(2),
    i32(values.length),
    Buffer.from(values.buffer),
    i32(5),
    i32(dataset.length),
    dataset,
  ]);
  const file = path.join(dir, 'm.dat');
  fs.writeFileSync(file, bytes);
  const m = readImatrix(file);
  assert.deepEqual(m.importance.get('blk.0.attn_v.weight'), Float32Array.of(4, 1, 3));
  assert.deepEqual([m.chunks, m.datasets], [5, ['wiki.train.raw']]);
  fs.writeFileSync(file, bytes.subarray(0, 30));
  assert.throws(() => readImatrix(file), /ends early|bad value count/);
});

test('an imatrix step with a file quantizes with its importance, without calibration', async () => {
  const tiny = `${MODELS}llama-tiny`;
  const model = loadLlama(tiny, cpu);
  const cols = model.config.hiddenSize;
  const importance = Float32Array.from(rng(9).normal(cols), (v) => Math.exp(v));
  const file = path.join(dir, 'tiny.gguf');
  // layer 0's q_proj only: every other linear has no entry and is rounded without one
  writeImatrix(file, [{ name: 'blk.0.attn_q.weight', sums: importance.map((v) => v * 4), count: 4 }], {
    datasets: ['x'],
    chunks: 1,
    chunkSize: 4,
  });
  const recipe = defineRecipe('file', {
    description: '',
    weights: 'q4_k_m',
    steps: [{ method: 'imatrix', file }],
  });
  const q = await cpu.read(model.layers[0].linears.q_proj.weight);
  const k = await cpu.read(model.layers[0].linears.k_proj.weight);
  await quantizeModel(model, recipe, undefined);
  const blocks = (name: 'q_proj' | 'k_proj') => {
    const enc = model.layers[0].linears[name].quantized?.encoded;
    assert.ok(enc?.scaleCodes);
    return ggmlBlockBytes(enc.codes, enc.scaleCodes, 'q4_k');
  };
  assert.deepEqual(blocks('q_proj'), quantizeQ4_K(q, { importance, cols }));
  assert.deepEqual(blocks('k_proj'), quantizeQ4_K(k));

  const bad = path.join(dir, 'bad.gguf');
  writeImatrix(bad, [{ name: 'blk.0.attn_q.weight', sums: Float32Array.of(1, 2), count: 1 }], {
    datasets: [],
    chunks: 1,
    chunkSize: 1,
  });
  const other = loadLlama(tiny, cpu);
  await assert.rejects(
    quantizeModel(other, { ...recipe, steps: [{ method: 'imatrix', file: bad }] }, undefined),
    /blk.0.attn_q.weight has 2 importance values, the model's rows have 256/,
  );
  // a recipe file finds the imatrix file it names beside itself
  const recipeFile = path.join(dir, 'r.yaml');
  fs.writeFileSync(recipeFile, 'description: x\nweights: q4_k_m\nsteps: [{imatrix: {file: tiny.gguf}}]\n');
  assert.deepEqual(resolveRecipe(recipeFile).steps, [{ method: 'imatrix', file }]);
  assert.throws(
    () =>
      defineRecipe('x', {
        description: '',
        weights: 'q4_k_m',
        steps: [{ method: 'awq' }, { method: 'imatrix', file }],
      }),
    /imatrix file must be a path, and the only step/,
  );
});
