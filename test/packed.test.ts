/**
 * Packed integer weights decoded inside the GEMM (model/packed.ts, Backend.linearPacked) against
 * the f32 GEMM over the decoded values, on both backends; and a quantized llama-tiny evaluated with
 * packed weights (dense copies freed) against the same model with f32 weights.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { encode, parseFormat } from '../src/formats/index.ts';
import { exportGguf } from '../src/io/export/gguf.ts';
import { GGML_TYPE, readGguf, readGgufTensor, writeGguf } from '../src/io/gguf.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { int8Eligible, useInt8Matmuls } from '../src/model/int8.ts';
import type { LlamaModel } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { packable, usePackedWeights } from '../src/model/packed.ts';
import { saveQuantized } from '../src/quant/checkpoint.ts';
import { loadModel } from '../src/quant/load.ts';
import '../src/quant/methods.ts';
import { dequantizeGptq } from '../src/quant/gptq.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { defineRecipe, resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import type { Backend, PackedWeight } from '../src/tensor/tensor.ts';
import { openDevice, WebGpuBackend, WebGpuTensor } from '../src/tensor/webgpu/backend.ts';
import { DEFAULT_GEMV } from '../src/tensor/webgpu/context.ts';
import { MODELS, randomGgmlBlocks, rng, testManifest, WIKITEXT } from './helpers.ts';

const probe = await openDevice();
probe?.device.destroy();
const gpu = probe ? await WebGpuBackend.create() : undefined;
const cpu = new CpuBackend();
const TINY = `${MODELS}llama-tiny`;
const BACKENDS: [string, Backend | undefined][] = [
  ['CPU', new CpuBackend()],
  ['WebGPU', gpu],
];

/** Bits a packed weight holds: its codes, scales and zeros arrays. */
function deviceBits(p: PackedWeight): number {
  const bits: Record<string, number> = { f32: 32, i32: 32, f16: 16 };
  let n = 0;
  for (const t of [p.codes, p.scales, p.zeros])
    if (typeof t !== 'number') n += t.shape.reduce((a, d) => a * d, 1) * bits[t.dtype];
  return n;
}

for (const [name, backend] of BACKENDS) {
  const skip = backend ? false : 'no WebGPU adapter';

  test(`${name} linearPacked equals linear over the decoded weights (4/3/8-bit, group/row, g_idx, q4_0/q8_0, IQ4, IQ3, IQ2_S, bias; zeros per group or one, f16 scales)`, {
    skip,
  }, async () => {
    const b = backend!;
    const model = { backend: b } as LlamaModel;
    const zeroKinds = new Set<string>();
    for (const [format, M, N, K, actOrder] of [
      ['int4-g32', 5, 24, 64, false],
      ['int3-g64', 17, 40, 128, false],
      ['int8-row-sym', 9, 33, 96, false],
      ['int4-row', 3, 8, 256, false],
      ['int4-g32', 6, 16, 128, true],
      // one to four rows: the matrix-vector kernel
      ['int4-g32', 1, 24, 64, false],
      ['int3-g64', 2, 40, 192, false],
      ['int8-row-sym', 4, 33, 96, false],
      ['int4-g32', 1, 16, 128, true],
      // rows of more words than one pass of the lanes takes (words 264 and 265), some lanes idle at the end
      ['int4-g32', 1, 24, 2112, false],
      ['int8-row-sym', 2, 16, 1060, false],
      // llama.cpp blocks: (code - 8) * d and (code - 128) * d per 32 columns, GEMM and GEMV
      ['q4_0', 5, 24, 64, false],
      ['q8_0', 3, 16, 96, false],
      ['q4_0', 1, 40, 128, false],
      // an odd number of f16 scales (9): the last u32 holds one
      ['q4_0', 2, 3, 96, false],
      ['q8_0', 5, 3, 96, false],
      // IQ4: levels[code] * d on the non-linear grid, GEMM and GEMV
      ['iq4_nl', 5, 24, 64, false],
      ['iq4_xs', 1, 16, 256, false],
      ['iq4_xs', 6, 8, 512, false],
      // IQ3: +-levels[code] * d, a grid point per 4 values, GEMV and GEMM
      ['iq3_xxs', 1, 16, 256, false],
      ['iq3_s', 5, 8, 512, false],
      ['iq2_s', 3, 8, 256, false],
      ['iq2_xxs', 1, 16, 256, false],
      ['iq2_xs', 5, 8, 512, false],
      ['iq1_s', 3, 8, 256, false],
      ['iq1_m', 1, 16, 256, false],
    ] as [string, number, number, number, boolean][]) {
      const spec = parseFormat(format);
      const enc = encode(rng(1).normal(N * K, 0.1), N, K, spec);
      // act_order: column c belongs to group gIdx[c], groups of 32 consecutive columns of a permutation
      const order = Array.from({ length: K }, (_, c) => (c * 37) % K);
      const gIdx = actOrder ? new Int32Array(K) : undefined;
      order.forEach((c, position) => {
        if (gIdx) gIdx[c] = Math.floor(position / 32);
      });
      const values = dequantizeGptq(enc, gIdx);
      const lin = { weight: b.upload(values, [N, K], 'f32'), quantized: { encoded: enc, gIdx } };
      const x = b.upload(rng(2).normal(M * K), [M, K], 'f32');
      const bias = b.upload(rng(3).normal(N), [N], 'f32');
      const fakeModel = { ...model, layers: [{ linears: { q_proj: lin } }] } as unknown as LlamaModel;
      // pack through the same function the model uses
      for (const k of ['k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'])
        (fakeModel.layers[0].linears as Record<string, unknown>)[k] = { weight: lin.weight };
      assert.equal(usePackedWeights(fakeModel, false), 1, format);
      const packed = fakeModel.layers[0].linears.q_proj.packed!;
      assert.equal(packed.codeBits, enc.bits <= 4 ? 4 : 8);
      // one zero point for all groups (symmetric INT, Q4_0 / Q8_0, the IQ grids): no zeros array
      const asymmetric = spec.kind === 'int' && !spec.symmetric;
      if (!asymmetric) assert.equal(typeof packed.zeros, 'number', format);
      zeroKinds.add(typeof packed.zeros);
      // f16 holds Q4_0's, Q8_0's and IQ4_NL's scales (their fp16 d) exactly: stored so, at their file's size
      const native = { q4_0: 4.5, q8_0: 8.5, iq4_nl: 4.5 }[format];
      assert.equal(packed.scales.dtype, native ? 'f16' : 'f32', format);
      if (native) assert.equal(deviceBits(packed) / (N * K), native, format);
      const want = await b.read(b.linear(x, lin.weight, bias));
      const got = await b.read(b.linearPacked(x, packed, bias));
      if (b instanceof WebGpuBackend && M <= 4) {
        // the packed GEMV adds the same products in the same order however it loads x and the words
        for (const gemv of [
          { chunks: false, unroll: 4 },
          { chunks: true, unroll: 1 },
          { chunks: true, unroll: 3 },
        ]) {
          b.ctx.gemv = gemv;
          assert.deepEqual(
            await b.read(b.linearPacked(x, packed, bias)),
            got,
            `${format} ${JSON.stringify(gemv)}`,
          );
        }
        b.ctx.gemv = DEFAULT_GEMV;
      }
      let worst = 0;
      let scale = 0;
      for (let i = 0; i < want.length; i++) {
        worst = Math.max(worst, Math.abs(got[i] - want[i]));
        scale = Math.max(scale, Math.abs(want[i]));
      }
      assert.ok(worst <= 1e-6 * scale, `${format}: max error ${worst} (max |y| ${scale})`);
    }
    assert.deepEqual([...zeroKinds].sort(), ['number', 'object']);
  });
}

test("WebGPU llama-tiny W4 g64 with packed weights (f32 copies freed) gives the f32 model's perplexity", {
  skip: gpu ? false : 'no WebGPU adapter',
}, async () => {
  const model = loadLlama(`${MODELS}llama-tiny`, gpu!);
  await quantizeModel(model, { ...resolveRecipe('rtn-w4g128'), weights: parseFormat('int4-g64') }, undefined);
  const tokens = loadTokenizer(`${MODELS}llama-tiny`).encode(readEvalText(WIKITEXT).slice(0, 6000));
  const opts = { seqLen: 256, maxWindows: 2 };
  const dense = await perplexity(model, tokens, opts);
  assert.equal(usePackedWeights(model, true), 7 * model.layers.length);
  const packed = await perplexity(model, tokens, opts);
  assert.ok(Math.abs(packed.ppl / dense.ppl - 1) < 1e-6, `packed ${packed.ppl} vs dense ${dense.ppl}`);
});

test('WebGPU: a stored W4 g64 / W8A8 checkpoint loaded codes-only (no f32 weights) evaluates to the same perplexity', {
  skip: gpu ? false : 'no WebGPU adapter',
}, async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-codes-'));
  try {
    const tokens = loadTokenizer(TINY).encode(readEvalText(WIKITEXT).slice(0, 4000));
    const opts = { seqLen: 128, maxWindows: 2 };
    for (const [name, recipe, run] of [
      [
        'w4g64',
        { ...resolveRecipe('rtn-w4g128'), weights: parseFormat('int4-g64') },
        (m: LlamaModel) => usePackedWeights(m, true),
      ],
      ['w8a8', resolveRecipe('rtn-w8a8'), (m: LlamaModel) => useInt8Matmuls(m)],
    ] as const) {
      const source = loadLlama(TINY, cpu);
      await quantizeModel(source, recipe, undefined);
      const dir = path.join(root, name);
      await saveQuantized(source, recipe, testManifest(TINY), dir, false);
      const dense = (await loadModel(dir, gpu!)).model;
      run(dense);
      const want = await perplexity(dense, tokens, opts);
      dense.dispose();
      const lean = (await loadModel(dir, gpu!, { codesOnly: (l) => packable(l) || int8Eligible(l) })).model;
      const linears = lean.layers.flatMap((l) => Object.values(l.linears));
      assert.ok(
        linears.every((l) => !(l.weight instanceof WebGpuTensor)),
        `${name}: f32 weights on the device`,
      );
      assert.equal(run(lean), linears.length);
      const got = await perplexity(lean, tokens, opts);
      assert.equal(got.ppl, want.ppl, name);
      lean.dispose();
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('WebGPU: rtn-q4_k_m / rtn-q5_k_m / rtn-q3_k_m / Q2_K / rtn-iq4_xs / rtn-iq3_m checkpoints (every llama.cpp type llmq writes) loaded codes-only run from their blocks', {
  skip: gpu ? false : 'no WebGPU adapter',
}, async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-kquant-codes-'));
  try {
    const tokens = loadTokenizer(TINY).encode(readEvalText(WIKITEXT).slice(0, 4000));
    const opts = { seqLen: 128, maxWindows: 2 };
    const q2k = defineRecipe('q2_k', { description: 'Q2_K file type', weights: 'q2_k_mix' });
    for (const name of ['rtn-q4_k_m', 'rtn-q5_k_m', 'rtn-q3_k_m', 'q2_k', 'rtn-iq4_xs', 'rtn-iq3_m']) {
      const recipe = name === 'q2_k' ? q2k : resolveRecipe(name);
      const source = loadLlama(TINY, cpu);
      await quantizeModel(source, recipe, undefined);
      const dir = path.join(root, name);
      await saveQuantized(source, recipe, testManifest(TINY), dir, false);
      const dense = (await loadModel(dir, gpu!)).model;
      const want = await perplexity(dense, tokens, opts);
      dense.dispose();
      const lean = (await loadModel(dir, gpu!, { codesOnly: packable })).model;
      const linears = lean.layers.flatMap((l) => Object.values(l.linears));
      assert.ok(
        linears.every((l) => !(l.weight instanceof WebGpuTensor)),
        `${name}: f32 weights on the device`,
      );
      assert.equal(usePackedWeights(lean, true), linears.length);
      const got = await perplexity(lean, tokens, opts);
      // Q4_K / Q5_K / Q5_1 subtract their min inside the GEMM as a zero point: one rounding away
      assert.ok(Math.abs(got.ppl / want.ppl - 1) < 1e-5, `${name}: codes ${got.ppl} vs decoded ${want.ppl}`);
      lean.dispose();
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

/** The perplexity of `file` with its weights dequantized, and the same file loaded codes-only. */
async function dequantizedPplAndCodesModel(
  file: string,
  tokens: Int32Array,
  opts: { seqLen: number; maxWindows: number },
) {
  const dense = (await loadModel(file, gpu!)).model;
  const want = await perplexity(dense, tokens, opts);
  dense.dispose();
  const lean = (await loadModel(file, gpu!, { codesOnly: packable })).model;
  const linears = lean.layers.flatMap((l) => Object.values(l.linears));
  return { want, lean, linears };
}

test('WebGPU: a Q4_0 / Q8_0 GGUF loaded codes-only runs from its codes to the perplexity of its dequantized weights', {
  skip: gpu ? false : 'no WebGPU adapter',
}, async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-gguf-codes-'));
  try {
    const tokens = loadTokenizer(TINY).encode(readEvalText(WIKITEXT).slice(0, 4000));
    const opts = { seqLen: 128, maxWindows: 2 };
    for (const type of ['q4_0', 'q8_0'] as const) {
      const file = path.join(root, `tiny-${type}.gguf`);
      await exportGguf(TINY, file, { type });
      const { want, lean, linears } = await dequantizedPplAndCodesModel(file, tokens, opts);
      assert.ok(
        linears.every((l) => !(l.weight instanceof WebGpuTensor)),
        `${type}: f32 weights on the device`,
      );
      assert.equal(usePackedWeights(lean, true), linears.length);
      const got = await perplexity(lean, tokens, opts);
      assert.ok(
        Math.abs(got.ppl / want.ppl - 1) < 1e-6,
        `${type}: codes ${got.ppl} vs dequantized ${want.ppl}`,
      );
      lean.dispose();
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('WebGPU: Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S, IQ2_S GGUF linears loaded codes-only run from their codes to the dequantized perplexity', {
  skip: gpu ? false : 'no WebGPU adapter',
}, async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-gguf-blocks-'));
  try {
    const base = path.join(root, 'tiny-q8_0.gguf');
    await exportGguf(TINY, base, { type: 'q8_0' });
    const src = readGguf(base);
    // K-quants need rows of a multiple of 256: llama-tiny's down_proj (704 inputs) takes the 32-blocks
    const typeOf = (name: string, layer: number) =>
      name.includes('ffn_down')
        ? (['Q4_1', 'Q5_0', 'Q5_1', 'IQ4_NL'] as const)[layer]
        : name.includes('attn_q') || name.includes('attn_k')
          ? layer % 2
            ? 'Q4_K'
            : name.includes('attn_q')
              ? 'IQ3_S'
              : 'IQ3_XXS'
          : name.includes('ffn_')
            ? 'Q5_K'
            : name.includes('attn_v')
              ? layer % 2
                ? 'Q3_K'
                : 'IQ4_XS'
              : layer % 2
                ? 'Q2_K'
                : layer === 0
                  ? 'IQ2_S'
                  : 'Q6_K';
    const tensors = src.tensors.map((t, i) => {
      const m = /^blk\.(\d+)\.(attn_[qkvo]|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$/.exec(t.name);
      if (!m) return { name: t.name, dims: t.dims, type: t.type, data: readGgufTensor(src, t.name) };
      const type = typeOf(t.name, Number(m[1]));
      const n = t.dims[0] * t.dims[1];
      return { name: t.name, dims: t.dims, type: GGML_TYPE[type], data: randomGgmlBlocks(type, n, i, 1e-4) };
    });
    const file = path.join(root, 'tiny-mixed.gguf');
    writeGguf(file, new Map(src.metadata), tensors);
    const tokens = loadTokenizer(TINY).encode(readEvalText(WIKITEXT).slice(0, 4000));
    const opts = { seqLen: 128, maxWindows: 2 };
    const { want, lean, linears } = await dequantizedPplAndCodesModel(file, tokens, opts);
    assert.ok(
      linears.every((l) => l.blockCodes && !(l.weight instanceof WebGpuTensor)),
      'f32 weights on the device',
    );
    assert.equal(usePackedWeights(lean, true), linears.length);
    assert.ok(
      linears.every((l) => l.blockCodes === undefined),
      'host codes freed once packed',
    );
    const got = await perplexity(lean, tokens, opts);
    assert.ok(Number.isFinite(want.ppl) && want.ppl > 1, `dequantized ${want.ppl}`);
    assert.ok(Math.abs(got.ppl / want.ppl - 1) < 1e-5, `codes ${got.ppl} vs dequantized ${want.ppl}`);
    lean.dispose();
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
