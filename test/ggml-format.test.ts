/**
 * llama.cpp's Q4_0 / Q8_0 as recipe weight formats: fake quant, encode/decode, names and recipes, and a
 * Q4_0 checkpoint exporting to exactly the GGUF blocks llama.cpp's quantizer gives the source weights.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { loadCalibration } from '../src/calib/data.ts';
import {
  dequantizeQ4_0,
  dequantizeQ4_K,
  dequantizeQ5_0,
  dequantizeQ6_K,
  dequantizeQ8_0,
  ggmlBlocks,
  quantizeQ4_0,
  quantizeQ5_0,
  quantizeQ5_1,
  quantizeQ8_0,
} from '../src/formats/ggml.ts';
import { ggmlBlockBytes } from '../src/formats/ggml-codes.ts';
import { decode, encode, fakeQuantRows, formatName, parseFormat } from '../src/formats/index.ts';
import {
  quantizeQ2_K,
  quantizeQ3_K,
  quantizeQ4_K,
  quantizeQ5_K,
  quantizeQ6_K,
} from '../src/formats/kquants.ts';
import type { FormatSpec, GgmlSpec } from '../src/formats/spec.ts';
import { ggmlTypeName, readGguf, readGgufTensor } from '../src/io/gguf.ts';
import { readImatrix } from '../src/io/imatrix-file.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import type { LinearName } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { defineRecipe, resolveRecipe } from '../src/quant/recipe.ts';
import { linearWeightSpec, weightSpecOf } from '../src/quant/weights.ts';
import { createBackend } from '../src/tensor/index.ts';
import { MODELS, rng, SHARED, savedTinyCheckpoint } from './helpers.ts';

const run = promisify(execFile);
const Q4 = parseFormat('q4_0');
const Q8 = parseFormat('q8_0');
const cpu = await createBackend('cpu');

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  return (
    Buffer.compare(
      Buffer.from(a.buffer, a.byteOffset, a.byteLength),
      Buffer.from(b.buffer, b.byteOffset, b.byteLength),
    ) === 0
  );
}

test('q4_0 / q8_0 parse, print and describe', () => {
  assert.deepEqual(Q4, { kind: 'ggml', type: 'q4_0' });
  assert.deepEqual(Q8, { kind: 'ggml', type: 'q8_0' });
  assert.equal(formatName(Q4), 'q4_0');
  assert.equal(formatName(parseFormat(' Q8_0 ')), 'q8_0');
});

test('hand-computed Q4_0 and Q8_0 blocks (signed max, first of ties, fp16 scale, zeros)', () => {
  // Q4_0: the largest magnitude is -4 -> d = 0.5, x = (q - 8) * 0.5 with q = min(15, trunc(x / 0.5 + 8.5))
  const x = new Float32Array(32);
  x.set([-4, 1, 0.74, 0.76, 3.9, -1.25]);
  const q4 = fakeQuantRows(x, 1, 32, Q4);
  assert.deepEqual([...q4.subarray(0, 6)], [-4, 1, 0.5, 1, 3.5, -1]);
  // a tie between +2 and -2: the first one sets the sign of d (so +2 is exact and -2 clips to -1.75)
  const tie = new Float32Array(32);
  tie.set([2, -2]);
  assert.deepEqual([...fakeQuantRows(tie, 1, 32, Q4).subarray(0, 2)], [2, -1.75]);
  tie.set([-2, 2]);
  assert.deepEqual([...fakeQuantRows(tie, 1, 32, Q4).subarray(0, 2)], [-2, 1.75]);
  // Q8_0: d = 127 / 127 = 1 -> integers, halves away from zero
  const y = new Float32Array(32);
  y.set([127, 2.5, -2.5, 0.49]);
  assert.deepEqual([...fakeQuantRows(y, 1, 32, Q8).subarray(0, 4)], [127, 3, -3, 0]);
  // d is stored as fp16: amax 1e-3 -> d = fp16(1e-3 / 127)
  const z = new Float32Array(32).fill(1e-3);
  const d16 = new Float32Array(dequantizeQ8_0(quantizeQ8_0(z)))[0] / 127;
  assert.equal(fakeQuantRows(z, 1, 32, Q8)[0], d16 * 127);
  assert.notEqual(d16, Math.fround(1e-3 / 127));
  // an all-zero Q4_0 block: d = -0, every value (8 - 8) * -0 = -0, as llama.cpp's dequantizer gives
  assert.ok(Object.is(fakeQuantRows(new Float32Array(32), 1, 32, Q4)[0], -0));
});

test('fake quant equals llama.cpp reference blocks; encode/decode round-trip bit for bit', () => {
  const r = rng(11);
  for (const [rows, cols, std] of [
    [3, 64, 1],
    [5, 96, 0.02],
    [2, 4096, 1e-4],
  ] as const) {
    const x = r.normal(rows * cols, std);
    for (const [spec, want] of [
      [Q4, dequantizeQ4_0(quantizeQ4_0(x))],
      [Q8, dequantizeQ8_0(quantizeQ8_0(x))],
    ] as const) {
      const fake = fakeQuantRows(x, rows, cols, spec);
      assert.ok(bitsEqual(fake, want), `${formatName(spec)} ${rows}x${cols}`);
      const enc = encode(x, rows, cols, spec);
      assert.equal(enc.scales.length, (rows * cols) / 32);
      assert.ok(Math.max(...enc.codes) <= (spec === Q4 ? 15 : 255));
      assert.ok(bitsEqual(decode(enc), fake), `decode ${formatName(spec)}`);
    }
  }
});

test('bad input: rows not a multiple of 32, non-finite values, activations, GPTQ', () => {
  assert.throws(
    () => fakeQuantRows(new Float32Array(48), 1, 48, Q4),
    /q4_0: blocks of 32 do not divide the row length \(last dimension\) 48/,
  );
  const x = new Float32Array(32);
  x[3] = Number.NaN;
  assert.throws(
    () => encode(x, 1, 32, Q8),
    /encode: q8_0 takes finite values only \(llama.cpp's quantizers\), got NaN at element 3/,
  );
  assert.throws(
    () => defineRecipe('t', { description: '', weights: 'q4_0', activations: 'q8_0' }),
    /q8_0 is a llama.cpp weight format/,
  );
  assert.throws(
    () =>
      defineRecipe('t', { description: '', weights: 'q4_0', steps: [{ method: 'gptq', actOrder: true }] }),
    /gptq actOrder with q4_0 needs staticGroups: true/,
  );
  assert.throws(
    () => defineRecipe('t', { description: '', weights: 'fp8-e4m3', steps: [{ method: 'gptq' }] }),
    /gptq quantizes to INT, MX and llama.cpp formats, not fp8-e4m3/,
  );
  assert.throws(
    () =>
      defineRecipe('t', {
        description: '',
        weights: 'int4-g128',
        steps: [{ method: 'gptq', importance: true }],
      }),
    /gptq importance weights llama.cpp's block scales; int4-g128 has none/,
  );
  assert.equal(resolveRecipe('gptq-q4_0').weights?.kind, 'ggml');
  assert.equal(resolveRecipe('awq-q4_0').weights?.kind, 'ggml');
});

for (const [recipe, types] of [
  [
    'gptq-q4_0',
    {
      attn_v: dequantizeQ4_0,
      attn_output: dequantizeQ4_0,
      ffn_gate: dequantizeQ4_0,
      ffn_down: dequantizeQ4_0,
    },
  ],
  // layer 1 is not a use_more_bits layer of 4; rows of 704 take Q4_K's fallback Q5_0
  [
    'gptq-q4_k_m',
    {
      attn_v: dequantizeQ4_K,
      attn_output: dequantizeQ4_K,
      ffn_gate: dequantizeQ4_K,
      ffn_down: dequantizeQ5_0,
    },
  ],
] as const) {
  test(`a ${recipe} checkpoint exports to GGUF blocks that decode to its weights bit for bit`, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `llmq-${recipe}-`));
    const spec = resolveRecipe(recipe).weights as FormatSpec;
    const model = await savedTinyCheckpoint(cpu, resolveRecipe(recipe), `${dir}/ckpt`, true);
    const type = formatName(spec);
    await run('./bin/llmq', ['export', `${dir}/ckpt`, '--to', `gguf-${type}`, '--out', `${dir}/m.gguf`]);
    const gguf = readGguf(`${dir}/m.gguf`);
    const src = loadLlama(`${MODELS}llama-tiny`, cpu);
    // q/k rows are permuted for llama.cpp's rope; these keep the checkpoint's row order
    const names = {
      attn_v: 'v_proj',
      attn_output: 'o_proj',
      ffn_gate: 'gate_proj',
      ffn_down: 'down_proj',
    } as const;
    for (const [ggufName, dequantize] of Object.entries(types)) {
      const name = names[ggufName as keyof typeof names];
      const want = await cpu.read(model.layers[1].linears[name].weight);
      const got = dequantize(readGgufTensor(gguf, `blk.1.${ggufName}.weight`), want.length);
      assert.ok(bitsEqual(got, want), ggufName);
      const [rows, cols] = model.layers[1].linears[name].weight.shape;
      const rtnSpec = weightSpecOf(src, { weights: spec, steps: [] }, 1, name) as FormatSpec;
      const rtn = fakeQuantRows(await cpu.read(src.layers[1].linears[name].weight), rows, cols, rtnSpec);
      assert.ok(!bitsEqual(got, rtn), `${ggufName}: GPTQ moved codes away from llama.cpp's RTN`);
    }
    fs.rmSync(dir, { recursive: true });
  });
}

/** llama-tiny quantized with an RTN recipe, then exported, equals the full-precision model exported. */
async function sameGgufAsFullPrecision(dir: string, recipe: string, type: string): Promise<void> {
  const src = `${MODELS}llama-tiny`;
  await run('./bin/llmq', ['quantize', src, '--recipe', recipe, '--out', `${dir}/ckpt`]);
  await run('./bin/llmq', [
    'export',
    `${dir}/ckpt`,
    '--to',
    `gguf-${type}`,
    '--out',
    `${dir}/from-ckpt.gguf`,
  ]);
  await run('./bin/llmq', ['export', src, '--to', `gguf-${type}`, '--out', `${dir}/from-fp.gguf`]);
  const a = readGguf(`${dir}/from-ckpt.gguf`);
  const b = readGguf(`${dir}/from-fp.gguf`);
  const names = a.tensors.filter((t) => t.name.startsWith('blk.')).map((t) => t.name);
  assert.ok(names.length > 20);
  for (const name of names)
    assert.equal(Buffer.compare(readGgufTensor(a, name), readGgufTensor(b, name)), 0, name);
}

test('an rtn-q4_0 checkpoint exports to the same GGUF Q4_0 blocks as the full-precision model', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-q40-'));
  await sameGgufAsFullPrecision(dir, 'rtn-q4_0', 'q4_0');
  fs.rmSync(dir, { recursive: true });
});

test('q5_0 / q5_1 / q2_k / q3_k / q4_k / q5_k / q6_k encode to the reference blocks and decode to their fake quant bit for bit', () => {
  const r = rng(31);
  const [rows, cols] = [3, 512];
  const x = Float32Array.from(r.normal(rows * cols), (v) => v * 0.03);
  x[700] = 0.9; // an outlier in one sub-block
  const cases = [
    ['q5_0', quantizeQ5_0],
    ['q5_1', quantizeQ5_1],
    ['q2_k', quantizeQ2_K],
    ['q3_k', quantizeQ3_K],
    ['q4_k', quantizeQ4_K],
    ['q5_k', quantizeQ5_K],
    ['q6_k', quantizeQ6_K],
  ] as const;
  for (const [name, quantize] of cases) {
    const spec = parseFormat(name);
    assert.equal(formatName(spec), name);
    const enc = encode(x, rows, cols, spec);
    assert.ok(enc.scaleCodes, `${name} keeps its block headers`);
    assert.deepEqual(ggmlBlockBytes(enc.codes, enc.scaleCodes, name), quantize(x), `${name} blocks`);
    assert.ok(bitsEqual(decode(enc), fakeQuantRows(x, rows, cols, spec)), `${name} decode`);
  }
  assert.throws(() => encode(x.subarray(0, 384), 1, 384, parseFormat('q4_k')), /blocks of 256 do not divide/);
  assert.throws(() => fakeQuantRows(x, rows, cols, parseFormat('q4_k_m')), /per-tensor mix/);
});

test("q4_k_m picks each linear's type as llama-quantize does", () => {
  const mix = parseFormat('q4_k_m');
  const typeOf = (layer: number, name: LinearName, cols: number) =>
    (
      linearWeightSpec(mix, { layer, name, layers: 32, llama70B: false, gqa: 1 }, cols) as
        | { type?: string }
        | undefined
    )?.type ?? 'f16';
  // use_more_bits over 32 layers: 0-3, every third from 6, 28-31
  const more = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
  for (let i = 0; i < 32; i++) {
    assert.equal(typeOf(i, 'v_proj', 4096), more.includes(i) ? 'q6_k' : 'q4_k', `layer ${i} v_proj`);
    assert.equal(typeOf(i, 'down_proj', 14336), more.includes(i) ? 'q6_k' : 'q4_k', `layer ${i} down_proj`);
    assert.equal(typeOf(i, 'q_proj', 4096), 'q4_k');
  }
  // rows that fit no super-block fall back; rows that fit no block of 32 stay unquantized
  assert.equal(typeOf(5, 'q_proj', 384), 'q5_0');
  assert.equal(typeOf(0, 'down_proj', 704), 'q8_0');
  assert.equal(typeOf(5, 'down_proj', 704), 'q5_0');
  assert.equal(typeOf(5, 'up_proj', 100), 'f16');
  assert.equal(typeOf(5, 'up_proj', 4096), 'q4_k');
  const o3 = { layer: 3, name: 'o_proj', layers: 32, llama70B: false, gqa: 1 } as const;
  assert.deepEqual(linearWeightSpec(parseFormat('q6_k'), o3, 384), {
    kind: 'ggml',
    type: 'q8_0',
  });
  assert.throws(
    () =>
      defineRecipe('x', {
        description: '',
        weights: 'q4_k_m',
        steps: [{ method: 'gptq' }, { method: 'imatrix' }],
      }),
    /gptq and imatrix both pick the final codes/,
  );
});

test('an rtn-q5_k_m checkpoint exports to the GGUF Q5_K_M llama-quantize writes', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-q5km-'));
  await sameGgufAsFullPrecision(dir, 'rtn-q5_k_m', 'q5_k_m');
  fs.rmSync(dir, { recursive: true });
});

test('rtn-q3_k_m and q2_k_mix checkpoints export to the GGUF Q3_K_M / Q2_K llama-quantize writes', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-q3km-'));
  await sameGgufAsFullPrecision(dir, 'rtn-q3_k_m', 'q3_k_m');
  const g = readGguf(`${dir}/from-ckpt.gguf`);
  assert.equal(g.metadata.get('general.file_type')?.value, 12);
  // llama-tiny (4 layers, rows of 256 and 704): Q3_K where rows fit, Q5_K / Q4_K attn_v, Q4_K attn_output
  const typeOf = (name: string) => ggmlTypeName(g.tensors.find((t) => t.name === name)!.type);
  assert.deepEqual(
    ['blk.1.attn_q.weight', 'blk.1.attn_v.weight', 'blk.2.attn_v.weight', 'blk.1.attn_output.weight'].map(
      typeOf,
    ),
    ['Q3_K', 'Q5_K', 'Q4_K', 'Q4_K'],
  );
  fs.mkdirSync(`${dir}/q2k`);
  fs.writeFileSync(`${dir}/q2k.yaml`, 'description: Q2_K file type\nweights: q2_k_mix\n');
  await sameGgufAsFullPrecision(`${dir}/q2k`, `${dir}/q2k.yaml`, 'q2_k');
  const g2 = readGguf(`${dir}/q2k/from-ckpt.gguf`);
  const typeOf2 = (name: string) => ggmlTypeName(g2.tensors.find((t) => t.name === name)!.type);
  assert.deepEqual(
    ['blk.0.attn_k.weight', 'blk.0.attn_v.weight', 'blk.0.attn_output.weight', 'blk.0.ffn_down.weight'].map(
      typeOf2,
    ),
    ['Q2_K', 'Q3_K', 'Q3_K', 'Q4_0'],
  );
  fs.rmSync(dir, { recursive: true });
});

test('an rtn-q4_k_m checkpoint exports to the GGUF Q4_K_M llama-quantize writes; awq-q4_k_m to its own blocks', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-q4km-'));
  await sameGgufAsFullPrecision(dir, 'rtn-q4_k_m', 'q4_k_m');

  // AWQ's scaled and clipped weights: the GGUF holds the checkpoint's blocks, which decode to its weights
  const model = await savedTinyCheckpoint(cpu, resolveRecipe('awq-q4_k_m'), `${dir}/awq`, true);
  await run('./bin/llmq', ['export', `${dir}/awq`, '--to', 'gguf-q4_k_m', '--out', `${dir}/awq.gguf`]);
  const g = readGguf(`${dir}/awq.gguf`);
  for (const [ggufName, name, dequantize] of [
    ['attn_output', 'o_proj', dequantizeQ4_K],
    ['attn_v', 'v_proj', dequantizeQ4_K], // layer 1 is not a use_more_bits layer of 4
    ['ffn_down', 'down_proj', dequantizeQ5_0], // rows of 704: Q4_K's fallback
  ] as const) {
    const want = await cpu.read(model.layers[1].linears[name].weight);
    const got = dequantize(readGgufTensor(g, `blk.1.${ggufName}.weight`), want.length);
    assert.ok(bitsEqual(got, want), ggufName);
  }
  const v3 = await cpu.read(model.layers[3].linears.v_proj.weight);
  assert.ok(
    bitsEqual(dequantizeQ6_K(readGgufTensor(g, 'blk.3.attn_v.weight'), v3.length), v3),
    'layer 3 attn_v',
  );
  fs.rmSync(dir, { recursive: true });
});

test('imatrix-q4_k_m quantizes each linear with the mean x^2 of its calibration inputs, as llama-imatrix + llama-quantize', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-imatrix-'));
  const tiny = `${MODELS}llama-tiny`;
  const model = await savedTinyCheckpoint(cpu, resolveRecipe('imatrix-q4_k_m'), `${dir}/ckpt`, true);
  // layer 0's q_proj input computed apart from the pipeline: the RMS-normed embeddings of the same ids
  const calib = await loadCalibration(loadTokenizer(tiny), {
    file: `${SHARED}data/text/brown.txt`,
    samples: 1,
    seqLen: 64,
    seed: 0,
  });
  const src = loadLlama(tiny, cpu);
  const x = await cpu.read(src.attentionNorm(0, src.embed(calib.ids)));
  const cols = src.config.hiddenSize;
  const sums = new Float64Array(cols);
  for (let i = 0; i < x.length; i++) sums[i % cols] += x[i] * x[i];
  const importance = Float32Array.from(sums, (s) => Math.fround(Math.fround(s) / (x.length / cols)));
  const w = await cpu.read(src.layers[0].linears.q_proj.weight);
  const want = quantizeQ4_K(w, { importance, cols });
  const enc = model.layers[0].linears.q_proj.quantized?.encoded;
  assert.ok(enc?.scaleCodes);
  assert.deepEqual(ggmlBlockBytes(enc.codes, enc.scaleCodes, 'q4_k'), want);
  assert.notDeepEqual(want, quantizeQ4_K(w), 'the importance changes the blocks');
  // the imatrix file beside the checkpoint gives llama-quantize --imatrix the same importance
  const file = readImatrix(`${dir}/ckpt/imatrix.gguf`);
  assert.deepEqual(file.importance.get('blk.0.attn_q.weight'), importance);
  assert.equal(file.importance.size, 7 * src.layers.length);
  assert.equal(file.chunks, 1);
  // `llmq imatrix` on the same calibration writes the same file's importance; a recipe reading it
  // quantizes every linear to the calibrated checkpoint's blocks
  const calibFlags = [
    '--calib',
    `${SHARED}data/text/brown.txt`,
    '--calib-samples',
    '1',
    '--calib-seqlen',
    '64',
  ];
  await run('./bin/llmq', ['imatrix', tiny, '--out', `${dir}/cli.gguf`, ...calibFlags]);
  await assert.rejects(
    run('./bin/llmq', ['imatrix', tiny, '--out', `${dir}/cli.gguf`, ...calibFlags]),
    /already exists/,
  );
  await run('./bin/llmq', ['imatrix', tiny, '--out', `${dir}/cli.gguf`, '--force', ...calibFlags]);
  assert.deepEqual(readImatrix(`${dir}/cli.gguf`).importance, file.importance);
  const fromFile = loadLlama(tiny, cpu);
  const recipe = defineRecipe('f', {
    description: '',
    weights: 'q4_k_m',
    steps: [{ method: 'imatrix', file: `${dir}/cli.gguf` }],
  });
  await quantizeModel(fromFile, recipe, undefined);
  for (const [i, layer] of fromFile.layers.entries())
    for (const [name, lin] of Object.entries(layer.linears))
      for (const part of ['codes', 'scaleCodes'] as const)
        assert.deepEqual(
          lin.quantized?.encoded[part],
          model.layers[i].linears[name as LinearName].quantized?.encoded[part],
          `layer ${i} ${name} ${part}`,
        );
  // Q4_0 through its importance path (quantize_row_q4_0_impl), as llama-quantize Q4_0 --imatrix
  const q40 = loadLlama(tiny, cpu);
  await quantizeModel(
    q40,
    defineRecipe('q', {
      description: '',
      weights: 'q4_0',
      steps: [{ method: 'imatrix', file: `${dir}/cli.gguf` }],
    }),
    undefined,
  );
  const q40Enc = q40.layers[0].linears.q_proj.quantized?.encoded;
  assert.ok(q40Enc);
  const q40Want = quantizeQ4_0(w, { importance, cols });
  assert.deepEqual(ggmlBlocks(q40Enc.codes, q40Enc.scales, Q4 as GgmlSpec), q40Want);
  assert.notDeepEqual(q40Want, quantizeQ4_0(w), 'the importance changes the Q4_0 blocks');
  // the GGUF file holds the checkpoint's blocks (v_proj: no RoPE row permutation)
  await run('./bin/llmq', ['export', `${dir}/ckpt`, '--to', 'gguf-q4_k_m', '--out', `${dir}/m.gguf`]);
  const meta = readGguf(`${dir}/m.gguf`).metadata;
  assert.deepEqual(
    ['quantize.imatrix.file', 'quantize.imatrix.entries_count', 'quantize.imatrix.chunks_count'].map(
      (k) => meta.get(k)?.value,
    ),
    ['imatrix.gguf', 28, 1],
  );
  const v = model.layers[0].linears.v_proj.quantized?.encoded;
  assert.ok(v?.scaleCodes);
  assert.deepEqual(
    readGgufTensor(readGguf(`${dir}/m.gguf`), 'blk.0.attn_v.weight'),
    ggmlBlockBytes(v.codes, v.scaleCodes, 'q4_k'),
  );
  assert.throws(
    () => defineRecipe('x', { description: '', weights: 'q8_0', steps: [{ method: 'imatrix' }] }),
    /imatrix weights llama.cpp's q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs, iq3_xxs, iq3_s, iq2_xxs, iq2_xs, iq2_s, iq1_s, iq1_m quantizers and their mixes .*iq4_xs_mix.*, not q8_0/,
  );
  fs.rmSync(dir, { recursive: true });
});

test('q2_k_s needs an importance matrix, as llama-quantize; with one it exports to the GGUF Q2_K_S of its blocks', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-q2ks-'));
  const tiny = `${MODELS}llama-tiny`;
  assert.throws(
    () => defineRecipe('x', { description: '', weights: 'q2_k_s' }),
    /q2_k_s needs an importance matrix, as llama-quantize refuses to write its Q2_K tensors without one/,
  );
  await assert.rejects(
    run('./bin/llmq', ['export', tiny, '--to', 'gguf-q2_k_s', '--out', `${dir}/fp.gguf`]),
    /Q2_K_S requires an importance matrix/,
  );
  assert.equal(fs.existsSync(`${dir}/fp.gguf`), false);
  const calib = ['--calib', `${SHARED}data/text/brown.txt`, '--calib-samples', '1', '--calib-seqlen', '64'];
  await run('./bin/llmq', ['imatrix', tiny, '--out', `${dir}/im.gguf`, ...calib]);
  const recipe = defineRecipe('q2ks', {
    description: '',
    weights: 'q2_k_s',
    steps: [{ method: 'imatrix', file: `${dir}/im.gguf` }],
  });
  const model = await savedTinyCheckpoint(cpu, recipe, `${dir}/ckpt`);
  await run('./bin/llmq', ['export', `${dir}/ckpt`, '--to', 'gguf-q2_k_s', '--out', `${dir}/m.gguf`]);
  const g = readGguf(`${dir}/m.gguf`);
  assert.equal(g.metadata.get('general.file_type')?.value, 21);
  // llama-tiny: 2 query heads per KV head (attn_v stays Q2_K), 4 layers (no ffn_down in the first
  // eighth), ffn_down rows of 704 (Q2_K's fallback Q4_0)
  const typeOf = (name: string) => ggmlTypeName(g.tensors.find((t) => t.name === name)?.type ?? -1);
  assert.deepEqual(
    ['token_embd', 'blk.1.attn_v', 'blk.1.attn_output', 'blk.0.ffn_down', 'output'].map((n) =>
      typeOf(`${n}.weight`),
    ),
    ['Q2_K', 'Q2_K', 'Q2_K', 'Q4_0', 'Q6_K'],
  );
  const v = model.layers[1].linears.v_proj.quantized?.encoded;
  assert.ok(v?.scaleCodes);
  const stored = readGgufTensor(g, 'blk.1.attn_v.weight');
  assert.deepEqual(stored, ggmlBlockBytes(v.codes, v.scaleCodes, 'q2_k'));
  const w = await cpu.read(loadLlama(tiny, cpu).layers[1].linears.v_proj.weight);
  const importance = readImatrix(`${dir}/im.gguf`).importance.get('blk.1.attn_v.weight');
  assert.ok(importance);
  assert.deepEqual(stored, quantizeQ2_K(w, { importance, cols: importance.length }));
  fs.rmSync(dir, { recursive: true });
});
