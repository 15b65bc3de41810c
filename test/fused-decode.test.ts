/**
 * The fused WebGPU decode ops (webgpu/gemv-fused.ts, the residual store of matmul.ts) against the ops
 * they replace: q/k/v + RoPE, gate/up + SiLU and the residual adds give the same logits bit for bit,
 * on 16-bit and packed (W4, IQ4_XS) weights, in fewer dispatches.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseFormat } from '../src/formats/index.ts';
import { useInt8Matmuls } from '../src/model/int8.ts';
import { LINEARS, type LlamaModel } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { usePackedWeights } from '../src/model/packed.ts';
import '../src/quant/methods.ts';
import type { IntSpec } from '../src/formats/spec.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { KvCache } from '../src/runtime/kv-cache.ts';
import { f32ToBf16 } from '../src/tensor/dtype.ts';
import { FUSED_OPS, type Tensor } from '../src/tensor/tensor.ts';
import { openDevice, WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import { MODELS, rng } from './helpers.ts';

const probe = await openDevice();
probe?.device.destroy();
const gpu = probe ? await WebGpuBackend.create() : undefined;
const skip = gpu ? false : 'no WebGPU adapter';
/** Runs `f` with the backend's fused ops hidden (the model then runs the separate ops). */
async function unfused<T>(b: WebGpuBackend, f: () => Promise<T>): Promise<T> {
  const own = b as unknown as Record<string, unknown>;
  for (const name of FUSED_OPS) own[name] = undefined;
  try {
    return await f();
  } finally {
    for (const name of FUSED_OPS) delete own[name];
  }
}

/**
 * Logits of a prompt of 3 then 1, 1 and 2 tokens through the KV cache, the dispatches they took and
 * the buffer copies they recorded.
 */
async function decode(
  model: LlamaModel,
): Promise<{ logits: Float32Array[]; dispatches: number; copies: number }> {
  const b = model.backend as WebGpuBackend;
  const cache = new KvCache(model, 32);
  const start = b.ctx.recorded;
  let copies = 0;
  const ctx = b.ctx as unknown as { copy: (...a: unknown[]) => void };
  const copy = ctx.copy;
  ctx.copy = (...a) => {
    copies++;
    copy.apply(b.ctx, a);
  };
  const logits: Float32Array[] = [];
  try {
    for (const ids of [[1, 50, 300], [7], [900], [12, 44]]) {
      cache.reserve(ids.length);
      const out = model.forwardCached(Int32Array.from(ids), cache);
      logits.push(await b.read(out));
      out.dispose();
    }
  } finally {
    ctx.copy = copy;
  }
  cache.dispose();
  return { logits, dispatches: b.ctx.recorded - start, copies };
}

test('WebGPU decoding with the fused q/k/v + RoPE, gate/up + SiLU (with or without their RMSNorm) and residual stores equals the separate ops bit for bit (bf16, W4 g64, IQ4_XS, Q4_0 codes)', {
  skip,
}, async () => {
  // Q4_0: one zero point (8) and f16 scales; IQ4_XS: a level grid and zero 0; W4 g64: zeros per group
  for (const format of ['bf16', 'int4-g64', 'iq4_xs', 'q4_0']) {
    const model = loadLlama(`${MODELS}llama-tiny`, gpu!);
    if (format !== 'bf16') {
      await quantizeModel(model, { ...resolveRecipe('rtn-w4g128'), weights: parseFormat(format) }, undefined);
      assert.equal(usePackedWeights(model, true), LINEARS.length * model.layers.length);
    }
    const want = await unfused(gpu!, () => decode(model));
    const got = await decode(model);
    gpu!.normInGemv = true;
    const normed = await decode(model);
    gpu!.normInGemv = false;
    assert.deepEqual(got.logits, want.logits, format);
    assert.deepEqual(normed.logits, want.logits, `${format}, RMSNorm in the GEMVs`);
    // 15 dispatches a layer become 7 (q/k/v+RoPE, attention, o+residual, gate/up+SiLU, down+residual
    // and the two norms), 5 with the norms in the GEMVs; plus embedding, final norm and head
    const layers = model.layers.length;
    assert.equal(want.dispatches, 4 * (15 * layers + 3), format);
    assert.equal(got.dispatches, 4 * (7 * layers + 3), format);
    assert.equal(normed.dispatches, 4 * (5 * layers + 3), format);
    // the separate ops copy k and v into the cache at every layer of every step; the fused q/k/v op
    // stores them there itself once something is cached (the three steps after the prompt)
    assert.equal(want.copies - got.copies, 3 * 2 * layers, format);
    assert.equal(normed.copies, got.copies, format);
    model.dispose();
  }
});

test('WebGPU W8A8 decoding: int8 GEMVs with the scales and residual in their store, q/k/v + RoPE and gate/up + SiLU on int8 codes, each input normed and quantized once in one kernel, equal the separate ops bit for bit', {
  skip,
}, async () => {
  const model = loadLlama(`${MODELS}llama-tiny`, gpu!);
  await quantizeModel(model, resolveRecipe('rtn-w8a8'), undefined);
  assert.equal(useInt8Matmuls(model), LINEARS.length * model.layers.length);
  const want = await unfused(gpu!, () => decode(model));
  const got = await decode(model);
  assert.deepEqual(got.logits, want.logits);
  // a step: each of 7 linears drops its GEMV's scale pass, o/down their residual adds, q/k/v and
  // gate/up become one kernel each with the RoPE and SiLU
  const layers = model.layers.length;
  assert.ok(want.dispatches - got.dispatches >= 4 * 13 * layers, `${want.dispatches} -> ${got.dispatches}`);
  // 9 a layer (43 with norms, a three-pass quantizer, GEMV and scale pass a linear and the adds) plus
  // embedding, final norm and head
  assert.equal(got.dispatches, 4 * (9 * layers + 3), `${got.dispatches} dispatches in 4 steps`);
  // k and v stored into the cache by the int8 q/k/v op after the prompt
  assert.equal(want.copies - got.copies, 3 * 2 * layers);
  model.dispose();
});

test('WebGPU fused ops against the separate ones on random operands: f32 / bf16 weights, 1-4 rows (GEMV) and the GEMM residual store; undefined beyond 4 rows', {
  skip,
}, async () => {
  const b = gpu!;
  const read = (t: Tensor) => b.read(t);
  const r = rng(5);
  const K = 96;
  const headDim = 16;
  const table = {
    invFreq: Float32Array.from({ length: headDim / 2 }, (_, i) => 10000 ** (-i / 8)),
    attentionScaling: 1,
  };
  for (const dtype of ['f32', 'bf16'] as const) {
    const weight = (n: number) => {
      const v = r.normal(n * K, 0.1);
      return dtype === 'f32' ? b.upload(v, [n, K], 'f32') : b.upload(f32ToBf16(v), [n, K], 'bf16');
    };
    const [wq, wk, wv, wg, wu] = [48, 32, 32, 40, 40].map(weight);
    for (const M of [1, 3, 4]) {
      const x = b.upload(r.normal(M * K), [M, K], 'f32');
      const pos = Int32Array.from({ length: M }, (_, i) => 5 + i);
      const fused = b.qkvRope(x, [wq, wk, wv], 5, headDim, table)!;
      const want = [
        b.rope(b.linear(x, wq), pos, headDim, table),
        b.rope(b.linear(x, wk), pos, headDim, table),
        b.linear(x, wv),
      ];
      for (let i = 0; i < 3; i++)
        assert.deepEqual(await read(fused[i]), await read(want[i]), `${dtype} qkv ${i} M ${M}`);
      assert.deepEqual(
        await read(b.gateUp(x, wg, wu)!),
        await read(b.siluMul(b.linear(x, wg), b.linear(x, wu))),
      );
      const res = b.upload(r.normal(M * 40), [M, 40], 'f32');
      assert.deepEqual(await read(b.linearAdd(x, wg, res)), await read(b.add(res, b.linear(x, wg))));
    }
    const x5 = b.upload(r.normal(5 * K), [5, K], 'f32');
    assert.equal(b.gateUp(x5, wg, wu), undefined);
    assert.equal(b.qkvRope(x5, [wq, wk, wv], 0, headDim, table), undefined);
    // the GEMM path (5 rows) adds the residual in its store too
    const res5 = b.upload(r.normal(5 * 40), [5, 40], 'f32');
    assert.deepEqual(await read(b.linearAdd(x5, wg, res5)), await read(b.add(res5, b.linear(x5, wg))));
  }
});

test('WebGPU linearInt8 equals matmulInt8 + scaleInt32 (+ add) bit for bit for 1-4 rows, with and without bias and residual; undefined beyond 4 rows', {
  skip,
}, async () => {
  const b = gpu!;
  const r = rng(9);
  const [K, N] = [96, 40];
  const codes = (rows: number) =>
    b.upload(
      Int8Array.from({ length: rows * K }, () => Math.round((r.uniform() - 0.5) * 254)),
      [rows, K],
      'i8',
    );
  const w = { codes: codes(N), scales: b.upload(r.normal(N, 0.01).map(Math.abs), [N], 'f32') };
  const bias = b.upload(r.normal(N), [N], 'f32');
  for (const M of [1, 2, 4]) {
    const x = codes(M);
    const rs = b.upload(r.normal(M, 0.1).map(Math.abs), [M], 'f32');
    const res = b.upload(r.normal(M * N), [M, N], 'f32');
    for (const [bi, re] of [
      [undefined, undefined],
      [bias, undefined],
      [bias, res],
      [undefined, res],
    ] as const) {
      const sep = b.scaleInt32(b.matmulInt8(x, w.codes), rs, w.scales, bi);
      const want = await b.read(re ? b.add(re, sep) : sep);
      const got = await b.read(b.linearInt8({ codes: x, scales: rs }, w, bi, re)!);
      assert.deepEqual(got, want, `M ${M} bias ${!!bi} residual ${!!re}`);
    }
  }
  assert.equal(
    b.linearInt8({ codes: codes(5), scales: b.upload(new Float32Array(5), [5], 'f32') }, w),
    undefined,
  );
});

test('WebGPU qkvRopeInt8 and gateUpInt8 equal the scaled int8 products with RoPE / SiLU bit for bit, 1-4 rows; undefined beyond 4 rows', {
  skip,
}, async () => {
  const b = gpu!;
  const r = rng(11);
  const K = 96;
  const headDim = 16;
  const table = {
    invFreq: Float32Array.from({ length: headDim / 2 }, (_, i) => 10000 ** (-i / 8)),
    attentionScaling: 1,
  };
  const rows = (n: number) => ({
    codes: b.upload(
      Int8Array.from({ length: n * K }, () => Math.round((r.uniform() - 0.5) * 254)),
      [n, K],
      'i8',
    ),
    scales: b.upload(r.normal(n, 0.01).map(Math.abs), [n], 'f32'),
  });
  const [wq, wk, wv, wg, wu] = [48, 32, 32, 40, 40].map(rows);
  const product = (x: ReturnType<typeof rows>, w: ReturnType<typeof rows>) =>
    b.scaleInt32(b.matmulInt8(x.codes, w.codes), x.scales, w.scales);
  for (const M of [1, 3, 4]) {
    const x = rows(M);
    const pos = Int32Array.from({ length: M }, (_, i) => 7 + i);
    const fused = b.qkvRopeInt8(x, [wq, wk, wv], 7, headDim, table)!;
    const want = [
      b.rope(product(x, wq), pos, headDim, table),
      b.rope(product(x, wk), pos, headDim, table),
      product(x, wv),
    ];
    for (let i = 0; i < 3; i++)
      assert.deepEqual(await b.read(fused[i]), await b.read(want[i]), `qkv ${i} M ${M}`);
    assert.deepEqual(
      await b.read(b.gateUpInt8(x, wg, wu)!),
      await b.read(b.siluMul(product(x, wg), product(x, wu))),
      `gate/up M ${M}`,
    );
  }
  const x5 = rows(5);
  assert.equal(b.gateUpInt8(x5, wg, wu), undefined);
  assert.equal(b.qkvRopeInt8(x5, [wq, wk, wv], 0, headDim, table), undefined);
});

test('WebGPU fused RMSNorm: qkvRope / gateUp with a norm and rmsnormQuantizeRowsInt8 equal rmsnorm followed by the op, bit for bit (1-4 rows, f32 / bf16 weights)', {
  skip,
}, async () => {
  const b = gpu!;
  b.normInGemv = true;
  const r = rng(13);
  const K = 96;
  const headDim = 16;
  const table = {
    invFreq: Float32Array.from({ length: headDim / 2 }, (_, i) => 10000 ** (-i / 8)),
    attentionScaling: 1,
  };
  const eps = 1e-5;
  for (const dtype of ['f32', 'bf16'] as const) {
    const upload = (v: Float32Array, shape: number[]) =>
      dtype === 'f32' ? b.upload(v, shape, 'f32') : b.upload(f32ToBf16(v), shape, 'bf16');
    const [wq, wk, wv, wg, wu] = [48, 32, 32, 40, 40].map((n) => upload(r.normal(n * K, 0.1), [n, K]));
    const norm = {
      weight: upload(
        r.normal(K, 0.3).map((v) => 1 + v),
        [K],
      ),
      eps,
    };
    for (const M of [1, 2, 4]) {
      // a residual-stream-like row: large values, one outlier channel
      const h = b.upload(
        r.normal(M * K, 4).map((v, i) => (i % K === 5 ? v * 30 : v)),
        [M, K],
        'f32',
      );
      const x = b.rmsnorm(h, norm.weight, eps);
      const fused = b.qkvRope(h, [wq, wk, wv], 3, headDim, table, norm)!;
      const want = b.qkvRope(x, [wq, wk, wv], 3, headDim, table)!;
      for (let i = 0; i < 3; i++)
        assert.deepEqual(await b.read(fused[i]), await b.read(want[i]), `${dtype} qkv ${i} M ${M}`);
      assert.deepEqual(
        await b.read(b.gateUp(h, wg, wu, norm)!),
        await b.read(b.gateUp(x, wg, wu)!),
        `${dtype} gate/up`,
      );
      for (const spec of [undefined, parseFormat('int4-row-sym') as IntSpec]) {
        const got = b.rmsnormQuantizeRowsInt8(h, norm, spec)!;
        const sep = b.quantizeRowsInt8(x, spec);
        assert.deepEqual(await b.read(got.codes), await b.read(sep.codes), `${dtype} codes M ${M}`);
        assert.deepEqual(await b.read(got.scales), await b.read(sep.scales), `${dtype} scales M ${M}`);
      }
    }
    // rows of many words: more than one pass of the workgroup over a row, the last one partial
    const KL = 2200;
    const normL = {
      weight: upload(
        r.normal(KL, 0.3).map((v) => 1 + v),
        [KL],
      ),
      eps,
    };
    const hL = b.upload(r.normal(2 * KL, 4), [2, KL], 'f32');
    const gotL = b.rmsnormQuantizeRowsInt8(hL, normL)!;
    const sepL = b.quantizeRowsInt8(b.rmsnorm(hL, normL.weight, eps));
    assert.deepEqual(await b.read(gotL.codes), await b.read(sepL.codes), `${dtype} codes K ${KL}`);
    assert.deepEqual(await b.read(gotL.scales), await b.read(sepL.scales), `${dtype} scales K ${KL}`);
    // a device with WebGPU's default 8 storage buffers a stage: q/k/v with its norm needs 9, so declines
    const ctx = b.ctx as unknown as { maxStorageBuffers: number };
    const limit = ctx.maxStorageBuffers;
    ctx.maxStorageBuffers = 8;
    const h8 = b.upload(r.normal(K), [1, K], 'f32');
    assert.equal(b.qkvRope(h8, [wq, wk, wv], 0, headDim, table, norm), undefined);
    assert.ok(b.qkvRope(h8, [wq, wk, wv], 0, headDim, table));
    ctx.maxStorageBuffers = limit;
    // off (the default), the GEMVs leave a norm to the caller
    b.normInGemv = false;
    const h1 = b.upload(r.normal(K), [1, K], 'f32');
    assert.equal(b.gateUp(h1, wg, wu, norm), undefined);
    assert.equal(b.qkvRope(h1, [wq, wk, wv], 0, headDim, table, norm), undefined);
    b.normInGemv = true;
  }
  b.normInGemv = false;
});
