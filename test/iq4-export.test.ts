/**
 * IQ4_XS / IQ4_NL and the Q4_0 file type with an importance matrix, end to end on llama-small (8
 * layers, so the first eighth of ffn_down is layer 0; rows of 384 and 1024; 3 query heads per KV
 * head): the types llama-quantize picks, checkpoints whose blocks are llama.cpp's, and GGUF exports.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { ggmlGroupValues, quantizeQ4_0, quantizeQ4_1, quantizeQ5_0 } from '../src/formats/ggml.ts';
import { ggmlBlockBytes } from '../src/formats/ggml-codes.ts';
import { formatName } from '../src/formats/index.ts';
import { quantizeIq4Nl, quantizeIq4Xs, unpackIq4Xs } from '../src/formats/iq4.ts';
import { readGguf, readGgufTensor } from '../src/io/gguf.ts';
import { loadGgufModel } from '../src/io/gguf-load.ts';
import type { LinearName } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { saveQuantized } from '../src/quant/checkpoint.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { defineRecipe } from '../src/quant/recipe.ts';
import { createBackend } from '../src/tensor/index.ts';
import { ggufTypesIn, MODELS, smallImatrix, testManifest } from './helpers.ts';

const run = promisify(execFile);
const cpu = await createBackend('cpu');
const small = `${MODELS}llama-small`;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-iq4-'));
after(() => fs.rmSync(dir, { recursive: true }));

const source = loadLlama(small, cpu);
const weightOf = (layer: number, name: LinearName) => cpu.read(source.layers[layer].linears[name].weight);
const NAMES = ['token_embd', 'blk.1.attn_v', 'blk.1.ffn_up', 'blk.0.ffn_down', 'blk.1.ffn_down'];

const imatrixFile = `${dir}/im.gguf`;
const importanceOf = await smallImatrix(small, imatrixFile);

async function checkpoint(name: string, weights: string, withImatrix: boolean) {
  const steps = withImatrix ? [{ method: 'imatrix' as const, file: imatrixFile }] : [];
  const recipe = defineRecipe(name, { description: name, weights, steps });
  const model = loadLlama(small, cpu);
  await quantizeModel(model, recipe, undefined);
  await saveQuantized(model, recipe, testManifest(small), `${dir}/${name}`, false);
  return model;
}

test('gguf-iq4_xs from full precision: llama-quantize types without an imatrix, blocks of llama.cpp', async () => {
  await run('./bin/llmq', ['export', small, '--to', 'gguf-iq4_xs', '--out', `${dir}/fp-xs.gguf`]);
  assert.equal(readGguf(`${dir}/fp-xs.gguf`).metadata.get('general.file_type')?.value, 30);
  // rows of 384 fall back to IQ4_NL; ffn_down (rows of 1024) in layer 0 is Q5_K without an imatrix
  assert.deepEqual(ggufTypesIn(`${dir}/fp-xs.gguf`, NAMES), ['IQ4_NL', 'IQ4_NL', 'IQ4_NL', 'Q5_K', 'IQ4_XS']);
  const g = readGguf(`${dir}/fp-xs.gguf`);
  assert.deepEqual(readGgufTensor(g, 'blk.1.ffn_down.weight'), quantizeIq4Xs(await weightOf(1, 'down_proj')));
  assert.deepEqual(readGgufTensor(g, 'blk.1.ffn_up.weight'), quantizeIq4Nl(await weightOf(1, 'up_proj')));
  // llmq reads it back: the weights are the blocks' values (ffn_down takes no rotary permutation)
  const back = loadGgufModel(`${dir}/fp-xs.gguf`, cpu);
  assert.deepEqual(
    await cpu.read(back.layers[1].linears.down_proj.weight),
    ggmlGroupValues(unpackIq4Xs(readGgufTensor(g, 'blk.1.ffn_down.weight'))),
  );
});

test('imatrix-iq4_xs: ffn_down of layer 0 stays IQ4_XS, weighted; the checkpoint exports to its own blocks', async () => {
  const model = await checkpoint('xs', 'iq4_xs_mix', true);
  const enc = model.layers[0].linears.down_proj.quantized?.encoded;
  assert.ok(enc?.scaleCodes);
  const want = quantizeIq4Xs(await weightOf(0, 'down_proj'), importanceOf('blk.0.ffn_down'));
  assert.deepEqual(ggmlBlockBytes(enc.codes, enc.scaleCodes, 'iq4_xs'), want);
  await run('./bin/llmq', ['export', `${dir}/xs`, '--to', 'gguf-iq4_xs', '--out', `${dir}/xs.gguf`]);
  assert.deepEqual(ggufTypesIn(`${dir}/xs.gguf`, NAMES), ['IQ4_NL', 'IQ4_NL', 'IQ4_NL', 'IQ4_XS', 'IQ4_XS']);
  assert.deepEqual(readGgufTensor(readGguf(`${dir}/xs.gguf`), 'blk.0.ffn_down.weight'), want);
  // to another file type the export re-quantizes with the checkpoint's importance, as llama-quantize
  // --imatrix would: Q4_K_M's attn_output (rows of 384: Q4_K's fallback Q5_0)
  await run('./bin/llmq', ['export', `${dir}/xs`, '--to', 'gguf-q4_k_m', '--out', `${dir}/xs-q4km.gguf`]);
  // of the checkpoint's weights (IQ4_NL values)
  const o = readGgufTensor(readGguf(`${dir}/xs-q4km.gguf`), 'blk.2.attn_output.weight');
  const stored = await cpu.read(model.layers[2].linears.o_proj.weight);
  assert.deepEqual(o, quantizeQ5_0(stored, importanceOf('blk.2.attn_output')));
  assert.notDeepEqual(o, quantizeQ5_0(stored));
});

test('imatrix-q4_0 (q4_0_mix): ffn_down of layer 0 in Q4_1, weighted; exports to GGUF Q4_0 unchanged', async () => {
  const model = await checkpoint('q40', 'q4_0_mix', true);
  const typeOf = (layer: number) => formatName(model.layers[layer].linears.down_proj.quantized!.encoded.spec);
  assert.deepEqual([typeOf(0), typeOf(1)], ['q4_1', 'q4_0']);
  await run('./bin/llmq', ['export', `${dir}/q40`, '--to', 'gguf-q4_0', '--out', `${dir}/q40.gguf`]);
  const g = readGguf(`${dir}/q40.gguf`);
  assert.deepEqual(ggufTypesIn(`${dir}/q40.gguf`, NAMES), ['Q4_0', 'Q4_0', 'Q4_0', 'Q4_1', 'Q4_0']);
  assert.deepEqual(
    readGgufTensor(g, 'blk.0.ffn_down.weight'),
    quantizeQ4_1(await weightOf(0, 'down_proj'), importanceOf('blk.0.ffn_down')),
  );
  assert.deepEqual(
    readGgufTensor(g, 'blk.1.ffn_down.weight'),
    quantizeQ4_0(await weightOf(1, 'down_proj'), importanceOf('blk.1.ffn_down')),
  );
  // q4_0 as the tensor type of every linear, with an imatrix: the export keeps the checkpoint's Q4_0
  // blocks (Q4_0 is what llama-quantize gives ffn_down without an imatrix) rather than rounding twice
  const plain = await checkpoint('q40-every', 'q4_0', true);
  await run('./bin/llmq', ['export', `${dir}/q40-every`, '--to', 'gguf-q4_0', '--out', `${dir}/every.gguf`]);
  assert.deepEqual(ggufTypesIn(`${dir}/every.gguf`, NAMES), ['Q4_0', 'Q4_0', 'Q4_0', 'Q4_0', 'Q4_0']);
  const down0 = plain.layers[0].linears.down_proj.quantized!.encoded;
  assert.deepEqual(
    readGgufTensor(readGguf(`${dir}/every.gguf`), 'blk.0.ffn_down.weight'),
    quantizeQ4_0(await weightOf(0, 'down_proj'), importanceOf('blk.0.ffn_down')),
  );
  assert.equal(formatName(down0.spec), 'q4_0');
  // without an imatrix the Q4_0 file type is Q4_0 throughout, as before
  await run('./bin/llmq', ['export', small, '--to', 'gguf-q4_0', '--out', `${dir}/fp-q40.gguf`]);
  assert.deepEqual(ggufTypesIn(`${dir}/fp-q40.gguf`, NAMES), ['Q4_0', 'Q4_0', 'Q4_0', 'Q4_0', 'Q4_0']);
});
