/**
 * IQ3_XS / IQ3_M end to end on llama-tiny (rows of 256, so q/k/v/o/gate/up take IQ3 blocks; ffn_down's
 * rows of 704 fall back to IQ4_NL; 4 layers; 2 query heads per KV head): the types llama-quantize
 * picks, blocks of llama.cpp's quantizers, checkpoints that keep them, and GGUF files llmq reads back.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { ggmlGroupValues } from '../src/formats/ggml.ts';
import { ggmlBlockBytes } from '../src/formats/ggml-codes.ts';
import { quantizeIq1M, unpackIq1M } from '../src/formats/iq1.ts';
import { quantizeIq2S, quantizeIq2Xs, unpackIq2S, unpackIq2Xs } from '../src/formats/iq2.ts';
import { quantizeIq3S, quantizeIq3Xxs, unpackIq3Xxs } from '../src/formats/iq3.ts';
import { readGguf, readGgufTensor } from '../src/io/gguf.ts';
import { loadGgufModel } from '../src/io/gguf-load.ts';
import type { LinearName } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { saveQuantized } from '../src/quant/checkpoint.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { defineRecipe } from '../src/quant/recipe.ts';
import { linearBitsPerWeight } from '../src/quant/size.ts';
import { createBackend } from '../src/tensor/index.ts';
import { ggufTypesIn, MODELS, smallImatrix, testManifest } from './helpers.ts';

const run = promisify(execFile);
const cpu = await createBackend('cpu');
const tiny = `${MODELS}llama-tiny`;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-iq3-'));
after(() => fs.rmSync(dir, { recursive: true }));

const source = loadLlama(tiny, cpu);
const weightOf = (layer: number, name: LinearName) => cpu.read(source.layers[layer].linears[name].weight);
const NAMES = [
  'token_embd',
  'blk.0.attn_q',
  'blk.0.attn_v',
  'blk.0.attn_output',
  'blk.0.ffn_gate',
  'blk.3.ffn_gate',
  'blk.0.ffn_down',
  'output',
];

const imatrixFile = `${dir}/im.gguf`;
const importanceOf = await smallImatrix(tiny, imatrixFile);

async function checkpoint(name: string, weights: string) {
  const recipe = defineRecipe(name, {
    description: name,
    weights,
    steps: [{ method: 'imatrix', file: imatrixFile }],
  });
  const model = loadLlama(tiny, cpu);
  await quantizeModel(model, recipe, undefined);
  await saveQuantized(model, recipe, testManifest(tiny), `${dir}/${name}`, false);
  return model;
}

test('IQ3_XS and IQ3_XXS need an importance matrix, as llama-quantize refuses their IQ3_XXS tensors without one', async () => {
  for (const weights of [
    'iq3_xs',
    'iq3_xxs',
    'iq3_xxs_mix',
    'iq2_s',
    'iq2_m',
    'iq2_xxs',
    'iq2_xs',
    'iq2_xxs_mix',
    'iq2_xs_mix',
    'iq2_s_mix',
    'iq1_s',
    'iq1_s_mix',
    'iq1_m',
    'iq1_m_mix',
  ])
    assert.throws(
      () => defineRecipe('x', { description: 'x', weights }),
      /needs an importance matrix/,
      weights,
    );
  await assert.rejects(
    run('./bin/llmq', ['export', tiny, '--to', 'gguf-iq3_xs', '--out', `${dir}/fp-xs.gguf`]),
    (e: { stderr: string }) => /IQ3_XS requires an importance matrix/.test(e.stderr),
  );
  assert.ok(!fs.existsSync(`${dir}/fp-xs.gguf`));
  await assert.rejects(
    run('./bin/llmq', ['export', tiny, '--to', 'gguf-iq2_xxs', '--out', `${dir}/fp-xxs.gguf`]),
    (e: { stderr: string }) => /IQ2_XXS requires an importance matrix/.test(e.stderr),
  );
});

test('imatrix IQ3_XS: IQ3_XXS / IQ3_S as llama-quantize picks them, weighted blocks of llama.cpp, exported unchanged', async () => {
  const model = await checkpoint('xs', 'iq3_xs');
  await run('./bin/llmq', ['export', `${dir}/xs`, '--to', 'gguf-iq3_xs', '--out', `${dir}/xs.gguf`]);
  const g = readGguf(`${dir}/xs.gguf`);
  assert.equal(g.metadata.get('general.file_type')?.value, 22);
  // IQ3_XXS for attn_q / attn_k and ffn_gate / ffn_up of layers [4/8, 7*4/8) = 0-2
  assert.deepEqual(ggufTypesIn(`${dir}/xs.gguf`, NAMES), [
    'IQ3_S',
    'IQ3_XXS',
    'IQ3_S',
    'IQ3_S',
    'IQ3_XXS',
    'IQ3_S',
    'IQ4_NL',
    'Q6_K',
  ]);
  const gate0 = quantizeIq3Xxs(await weightOf(0, 'gate_proj'), importanceOf('blk.0.ffn_gate'));
  assert.deepEqual(readGgufTensor(g, 'blk.0.ffn_gate.weight'), gate0);
  const enc = model.layers[0].linears.gate_proj.quantized?.encoded;
  assert.ok(enc?.scaleCodes);
  assert.deepEqual(ggmlBlockBytes(enc.codes, enc.scaleCodes, 'iq3_xxs'), gate0);
  assert.deepEqual(
    readGgufTensor(g, 'blk.3.ffn_gate.weight'),
    quantizeIq3S(await weightOf(3, 'gate_proj'), importanceOf('blk.3.ffn_gate')),
  );
  const back = loadGgufModel(`${dir}/xs.gguf`, cpu);
  assert.deepEqual(
    await cpu.read(back.layers[0].linears.gate_proj.weight),
    ggmlGroupValues(unpackIq3Xxs(gate0)),
  );
});

test('imatrix-iq3_m: weighted IQ3_S blocks in the checkpoint, exported to GGUF IQ3_M unchanged', async () => {
  const model = await checkpoint('iq3m', 'iq3_m');
  const enc = model.layers[1].linears.up_proj.quantized?.encoded;
  assert.ok(enc?.scaleCodes);
  const want = quantizeIq3S(await weightOf(1, 'up_proj'), importanceOf('blk.1.ffn_up'));
  assert.deepEqual(ggmlBlockBytes(enc.codes, enc.scaleCodes, 'iq3_s'), want);
  assert.notDeepEqual(want, quantizeIq3S(await weightOf(1, 'up_proj')));
  // bits per weight as the GGUF blocks store them: IQ3_S 110 bytes / 256 (q, k, gate, up), Q4_K 144 / 256
  // (v, o), IQ4_NL 18 / 32 (down, rows of 704)
  const [q, kv, ffn] = [256 * 256, 128 * 256, 704 * 256];
  const bits = 3.4375 * (q + kv + 2 * ffn) + 4.5 * (kv + q) + 4.5 * ffn;
  assert.ok(Math.abs(linearBitsPerWeight(model) - bits / (2 * q + 2 * kv + 3 * ffn)) < 1e-12);
  await run('./bin/llmq', ['export', `${dir}/iq3m`, '--to', 'gguf-iq3_m', '--out', `${dir}/iq3m.gguf`]);
  const g = readGguf(`${dir}/iq3m.gguf`);
  assert.equal(g.metadata.get('general.file_type')?.value, 27);
  // IQ3_M: Q4_K for attn_v and attn_output
  assert.deepEqual(ggufTypesIn(`${dir}/iq3m.gguf`, NAMES), [
    'IQ3_S',
    'IQ3_S',
    'Q4_K',
    'Q4_K',
    'IQ3_S',
    'IQ3_S',
    'IQ4_NL',
    'Q6_K',
  ]);
  assert.deepEqual(readGgufTensor(g, 'blk.1.ffn_up.weight'), want);
});

test('imatrix IQ2_M: weighted IQ2_S blocks, IQ3_S where llama-quantize gives more bits, exported unchanged', async () => {
  const model = await checkpoint('iq2m', 'iq2_m');
  await run('./bin/llmq', ['export', `${dir}/iq2m`, '--to', 'gguf-iq2_m', '--out', `${dir}/iq2m.gguf`]);
  const g = readGguf(`${dir}/iq2m.gguf`);
  assert.equal(g.metadata.get('general.file_type')?.value, 29);
  // attn_v and attn_output IQ3_S, ffn_down's rows of 704 IQ4_NL, output Q5_K, embeddings IQ3_S
  assert.deepEqual(ggufTypesIn(`${dir}/iq2m.gguf`, NAMES), [
    'IQ3_S',
    'IQ2_S',
    'IQ3_S',
    'IQ3_S',
    'IQ2_S',
    'IQ2_S',
    'IQ4_NL',
    'Q5_K',
  ]);
  const want = quantizeIq2S(await weightOf(1, 'gate_proj'), importanceOf('blk.1.ffn_gate'));
  assert.deepEqual(readGgufTensor(g, 'blk.1.ffn_gate.weight'), want);
  const enc = model.layers[1].linears.gate_proj.quantized?.encoded;
  assert.ok(enc?.scaleCodes);
  assert.deepEqual(ggmlBlockBytes(enc.codes, enc.scaleCodes, 'iq2_s'), want);
  const back = loadGgufModel(`${dir}/iq2m.gguf`, cpu);
  assert.deepEqual(
    await cpu.read(back.layers[1].linears.gate_proj.weight),
    ggmlGroupValues(unpackIq2S(want)),
  );
});

// IQ2_XXS and IQ1_S files take the same path (their blocks: iq3.test.ts; their rules: llama-mix.test.ts)
test('imatrix IQ2_S and IQ1_M file types: weighted IQ2_XS / IQ1_M blocks of llama.cpp, Q2_K, IQ3_S or IQ2_XXS where they give more bits, exported unchanged', async () => {
  for (const [name, weights, to, fileType, type, more, out, quantize, unpack] of [
    ['iq2s', 'iq2_s_mix', 'iq2_s', 28, 'IQ2_XS', 'IQ3_S', 'IQ3_S', quantizeIq2Xs, unpackIq2Xs],
    ['iq1m', 'iq1_m_mix', 'iq1_m', 31, 'IQ1_M', 'Q2_K', 'IQ2_XXS', quantizeIq1M, unpackIq1M],
  ] as const) {
    const model = await checkpoint(name, weights);
    const file = `${dir}/${name}.gguf`;
    await run('./bin/llmq', ['export', `${dir}/${name}`, '--to', `gguf-${to}`, '--out', file]);
    const g = readGguf(file);
    assert.equal(g.metadata.get('general.file_type')?.value, fileType);
    // embeddings and attn_v in the type with more bits; ffn_down's rows of 704 IQ4_NL in every layer
    assert.deepEqual(ggufTypesIn(file, NAMES), [more, type, more, out, type, type, 'IQ4_NL', 'Q5_K']);
    const want = quantize(await weightOf(1, 'gate_proj'), importanceOf('blk.1.ffn_gate'));
    assert.deepEqual(readGgufTensor(g, 'blk.1.ffn_gate.weight'), want);
    const enc = model.layers[1].linears.gate_proj.quantized?.encoded;
    assert.ok(enc?.scaleCodes);
    assert.deepEqual(
      ggmlBlockBytes(enc.codes, enc.scaleCodes, type.toLowerCase() as 'iq2_xs' | 'iq1_s' | 'iq1_m'),
      want,
    );
    const back = loadGgufModel(file, cpu);
    assert.deepEqual(await cpu.read(back.layers[1].linears.gate_proj.weight), ggmlGroupValues(unpack(want)));
  }
});

test('gptq with an IQ3 type or mix is refused: its codes are grid points of 4 weights', () => {
  for (const weights of ['iq3_s', 'iq3_m', 'iq3_s_mix'])
    assert.throws(
      () => defineRecipe('g', { description: 'g', weights, steps: [{ method: 'gptq' }] }),
      /grid points of 4 weights/,
      weights,
    );
});
