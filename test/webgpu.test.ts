/**
 * The WebGPU backend against the CPU reference: every op on random inputs, fakeQuant bit for bit,
 * and llama-tiny perplexity. CI runs this on Mesa lavapipe (Vulkan on the CPU); the tests skip only
 * when no WebGPU adapter can be created at all.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { synthConfig, writeSynthCheckpoint } from '../src/cli/synth.ts';
import { readEvalText } from '../src/eval/eval-text.ts';
import { defaultBatch, perplexity } from '../src/eval/perplexity.ts';
import { parseFormat } from '../src/formats/index.ts';
import { ropeTable } from '../src/io/rope.ts';
import { openCheckpoint } from '../src/io/safetensors.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import '../src/quant/methods.ts';
import type { IntSpec } from '../src/formats/spec.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { KvCache } from '../src/runtime/kv-cache.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { bf16ToF32, f32ToBf16, f32ToF16 } from '../src/tensor/dtype.ts';
import { createBackend } from '../src/tensor/index.ts';
import type { Backend, DType, HostArray, Tensor } from '../src/tensor/tensor.ts';
import { openDevice, WebGpuBackend, WebGpuTensor } from '../src/tensor/webgpu/backend.ts';
import { DEFAULT_GEMV } from '../src/tensor/webgpu/context.ts';
import { COMMON } from '../src/tensor/webgpu/quant.ts';
import {
  assertSameWeights,
  MODELS,
  nearTies,
  randomCalibration,
  rng,
  WIKITEXT,
  wholeLayerGptq,
} from './helpers.ts';

const cpu = new CpuBackend();
const probe = await openDevice();
probe?.device.destroy();
const skip = probe ? false : 'no WebGPU adapter (install Mesa lavapipe: apt-get install mesa-vulkan-drivers)';
const gpu = probe ? await WebGpuBackend.create() : undefined;
/** A second device whose kernels may bind at most 4 KiB of a buffer: exercises the row windows. */
const tiny = probe ? await WebGpuBackend.create({ maxBindingBytes: 4096, maxBufferBytes: 16384 }) : undefined;

function onBoth(data: Float32Array, shape: number[], dtype: DType = 'f32'): [Tensor, Tensor, Tensor] {
  const host: HostArray = dtype === 'bf16' ? f32ToBf16(data) : dtype === 'f16' ? f32ToF16(data) : data;
  return [cpu.upload(host, shape, dtype), gpu!.upload(host, shape, dtype), tiny!.upload(host, shape, dtype)];
}

/** max |a - b| / max |b| */
function relErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return den === 0 ? num : num / den;
}

async function expectClose(got: Tensor, want: Tensor, tol: number, what: string): Promise<void> {
  assert.deepEqual(got.shape, want.shape, `${what}: shape`);
  const g = await got.backend.read(got);
  const w = await want.backend.read(want);
  const err = relErr(g, w);
  assert.ok(err < tol, `${what}: relative error ${err} >= ${tol}`);
}

test('upload and read round-trip every dtype', { skip }, async () => {
  const r = rng(1);
  const x = r.normal(37 * 5);
  for (const dtype of ['f32', 'bf16', 'f16'] as const) {
    const [c, g, t] = onBoth(x, [37, 5], dtype);
    const want = await cpu.read(c);
    assert.deepEqual(await gpu!.read(g), want, dtype);
    assert.deepEqual(await tiny!.read(t), want, `${dtype} (windows)`);
  }
  const ints = Int32Array.from({ length: 21 }, (_, i) => i * 7 - 60);
  assert.deepEqual(await gpu!.read(gpu!.upload(ints, [3, 7], 'i32')), Float32Array.from(ints));
  const bytes = Int8Array.from({ length: 7 }, (_, i) => i * 30 - 100);
  assert.deepEqual(await gpu!.read(gpu!.upload(bytes, [7], 'i8')), Float32Array.from(bytes));
});

test('linear matches the CPU within 1e-5 for f32/bf16/f16 weights, odd shapes, bias, windows, GEMV', {
  skip,
}, async () => {
  const r = rng(2);
  for (const [M, N, K] of [
    [1, 1, 1],
    // up to 4 rows: the matrix-vector kernel (generation's decode step)
    [1, 300, 900],
    [3, 17, 40],
    [4, 129, 513],
    [5, 7, 3],
    [37, 130, 65],
    [70, 33, 256],
    [128, 96, 128],
  ]) {
    const [xc, xg, xt] = onBoth(r.normal(M * K), [M, K]);
    const [bc, bg, bt] = onBoth(r.normal(N), [N]);
    for (const dtype of ['f32', 'bf16', 'f16'] as const) {
      const [wc, wg, wt] = onBoth(r.normal(N * K, 0.5), [N, K], dtype);
      const want = cpu.linear(xc, wc, bc);
      await expectClose(gpu!.linear(xg, wg, bg), want, 1e-5, `${M}x${N}x${K} ${dtype}`);
      await expectClose(tiny!.linear(xt, wt, bt), want, 1e-5, `${M}x${N}x${K} ${dtype} windows`);
      await expectClose(gpu!.linear(xg, wg), cpu.linear(xc, wc), 1e-5, `${M}x${N}x${K} ${dtype} no bias`);
      const tile = gpu!.gemmTile;
      gpu!.gemmTile = { tm: 4, tn: 8, bk: 16, prefetch: !tile.prefetch };
      await expectClose(gpu!.linear(xg, wg, bg), want, 1e-5, `${M}x${N}x${K} ${dtype} other tile`);
      gpu!.gemmTile = tile;
    }
  }
});

test('GEMV: chunked and scalar loops match the CPU; chunked sums do not depend on the unroll', {
  skip,
}, async () => {
  const r = rng(12);
  // K: chunk counts below, at and past one pass of the lanes (32 chunks) times the unroll
  for (const [M, N, K] of [
    [1, 70, 1024],
    [2, 40, 196],
    [4, 9, 96],
    [1, 5, 516],
  ]) {
    const [xc, xg] = onBoth(r.normal(M * K), [M, K]);
    for (const dtype of ['f32', 'bf16', 'f16'] as const) {
      const [wc, wg] = onBoth(r.normal(N * K, 0.5), [N, K], dtype);
      const want = cpu.linear(xc, wc);
      const sums: Float32Array[] = [];
      for (const gemv of [
        { chunks: true, unroll: 4 },
        { chunks: true, unroll: 1 },
        { chunks: true, unroll: 2 },
        { chunks: false, unroll: 4 },
      ]) {
        gpu!.ctx.gemv = gemv;
        const y = gpu!.linear(xg, wg);
        await expectClose(y, want, 1e-5, `${M}x${N}x${K} ${dtype} ${JSON.stringify(gemv)}`);
        sums.push(await gpu!.read(y));
      }
      gpu!.ctx.gemv = DEFAULT_GEMV;
      assert.deepEqual(sums[1], sums[0], `${M}x${N}x${K} ${dtype}: unroll 1 vs 4`);
      assert.deepEqual(sums[2], sums[0], `${M}x${N}x${K} ${dtype}: unroll 2 vs 4`);
    }
  }
});

test('a kernel profile counts every dispatch by kernel key and leaves the results alone', {
  skip: skip || (!gpu!.ctx.features.has('timestamp-query') && 'no timestamp-query'),
}, async () => {
  const r = rng(13);
  const [, xg] = onBoth(r.normal(2 * 64), [2, 64]);
  const [, wg] = onBoth(r.normal(96 * 64), [96, 64], 'bf16');
  const [, ng] = onBoth(r.normal(64), [64], 'bf16');
  const want = await gpu!.read(gpu!.linear(gpu!.rmsnorm(xg, ng, 1e-5), wg));
  gpu!.ctx.startProfile();
  const got: Tensor[] = [];
  // more dispatches than one submit holds (64): the queries of every submit are read
  for (let i = 0; i < 50; i++) got.push(gpu!.linear(gpu!.rmsnorm(xg, ng, 1e-5), wg));
  const times = await gpu!.ctx.stopProfile();
  for (const y of got) assert.deepEqual(await gpu!.read(y), want);
  const counts = Object.fromEntries(times.map((t) => [t.key.split(':')[0], t.dispatches]));
  assert.deepEqual(counts, { gemv: 50, rmsnorm: 50 });
  for (const t of times) assert.ok(t.ms > 0 && t.ms < 1e4, `${t.key}: ${t.ms} ms`);
  assert.deepEqual(await gpu!.ctx.stopProfile(), [], 'a second stop has nothing');
});

test('embedding gathers f32 and bf16 rows, across windows', { skip }, async () => {
  const r = rng(3);
  const ids = Int32Array.from([0, 5, 99, 5, 63, 1, 98]);
  for (const dtype of ['f32', 'bf16'] as const) {
    const [c, g, t] = onBoth(r.normal(100 * 24), [100, 24], dtype);
    const want = await cpu.read(cpu.embedding(c, ids));
    assert.deepEqual(await gpu!.read(gpu!.embedding(g, ids)), want);
    assert.deepEqual(await tiny!.read(tiny!.embedding(t, ids)), want);
  }
  assert.throws(
    () => gpu!.embedding(gpu!.upload(new Float32Array(4), [2, 2], 'f32'), Int32Array.from([2])),
    /vocabulary/,
  );
});

test('rmsnorm, rope, siluMul, add, sub, scaleColumns, scaleRows match the CPU', { skip }, async () => {
  const r = rng(4);
  const [M, D] = [67, 192];
  const [xc, xg, xt] = onBoth(r.normal(M * D, 3), [M, D]);
  const [yc, yg, yt] = onBoth(r.normal(M * D), [M, D]);
  const [wc, wg] = onBoth(r.normal(D), [D], 'bf16');
  await expectClose(gpu!.rmsnorm(xg, wg, 1e-5), cpu.rmsnorm(xc, wc, 1e-5), 1e-6, 'rmsnorm');
  const table = ropeTable({
    headDim: 64,
    maxPositionEmbeddings: 4096,
    rope: { type: 'default', theta: 500000 },
  });
  const pos = Int32Array.from({ length: M }, (_, i) => (i * 37) % 2100);
  await expectClose(gpu!.rope(xg, pos, 64, table), cpu.rope(xc, pos, 64, table), 1e-6, 'rope');
  await expectClose(gpu!.siluMul(xg, yg), cpu.siluMul(xc, yc), 1e-6, 'siluMul');
  await expectClose(gpu!.add(xg, yg), cpu.add(xc, yc), 1e-7, 'add');
  await expectClose(tiny!.sub(xt, yt), cpu.sub(xc, yc), 1e-7, 'sub windows');
  const [sc, sg] = onBoth(r.normal(D), [D]);
  await expectClose(gpu!.scaleColumns(xg, sg), cpu.scaleColumns(xc, sc), 1e-7, 'scaleColumns');
  const [rc, rg, rt] = onBoth(r.normal(M), [M]);
  await expectClose(gpu!.scaleRows(xg, rg), cpu.scaleRows(xc, rc), 1e-7, 'scaleRows');
  await expectClose(tiny!.scaleRows(xt, rt), cpu.scaleRows(xc, rc), 1e-7, 'scaleRows windows');
});

test('kron (x -> x (L ⊗ R), FlatQuant) matches the CPU, within and across row windows', {
  skip,
}, async () => {
  const r = rng(12);
  // 6 x 16: blocks of 10 columns, the last partial; 70: 128 threads a workgroup, 58 idle; 300: more
  // rows of T than threads; 32 x 128: the o_proj shape of FlatQuant (heads x head_dim)
  for (const [M, n1, n2] of [
    [37, 6, 16],
    [5, 70, 12],
    [3, 300, 5],
    [2, 32, 128],
  ]) {
    const [xc, xg, xt] = onBoth(r.normal(M * n1 * n2), [M, n1 * n2]);
    const [lc, lg, lt] = onBoth(r.normal(n1 * n1), [n1, n1]);
    const [rc, rg, rt] = onBoth(r.normal(n2 * n2), [n2, n2]);
    const want = cpu.kron(xc, lc, rc);
    await expectClose(gpu!.kron(xg, lg, rg), want, 1e-6, `kron ${n1}x${n2}`);
    // the small-binding device holds factors of up to 1 KiB: windows run on the first shape only
    if (Math.max(n1, n2) ** 2 * 4 < 4096)
      await expectClose(tiny!.kron(xt, lt, rt), want, 1e-6, `kron ${n1}x${n2} windows`);
  }
  const big = gpu!.upload(new Float32Array(4097 * 4097), [4097, 4097], 'f32');
  const one = gpu!.upload(new Float32Array(4097), [1, 4097], 'f32');
  assert.throws(() => gpu!.kron(one, big, gpu!.upload(new Float32Array(1), [1, 1], 'f32')), /4097 rows/);
});

test('causal GQA attention matches the CPU (head_dim 64 and 128, batch 2)', { skip }, async () => {
  const r = rng(5);
  for (const [batch, seqLen, H, Hkv, Dh] of [
    [2, 77, 4, 2, 64],
    [1, 40, 2, 1, 128],
    [3, 5, 3, 3, 32],
  ]) {
    const rows = batch * seqLen;
    const [qc, qg, qt] = onBoth(r.normal(rows * H * Dh, 2), [rows, H * Dh]);
    const [kc, kg, kt] = onBoth(r.normal(rows * Hkv * Dh, 2), [rows, Hkv * Dh]);
    const [vc, vg, vt] = onBoth(r.normal(rows * Hkv * Dh), [rows, Hkv * Dh]);
    const s = { batch, seqLen, numHeads: H, numKvHeads: Hkv, headDim: Dh };
    const want = cpu.attention(qc, kc, vc, s);
    await expectClose(gpu!.attention(qg, kg, vg, s), want, 1e-5, `attention ${JSON.stringify(s)}`);
    if (seqLen * H * Dh * 4 < 2048)
      await expectClose(tiny!.attention(qt, kt, vt, s), want, 1e-5, 'attention windows');
  }
});

test('klDiv matches the CPU (f64) for small and large divergences', { skip }, async () => {
  const r = rng(16);
  const M = 37;
  for (const [backend, V] of [
    [gpu!, 1000],
    [tiny!, 300], // rows in several binding windows
  ] as const) {
    const p = r.normal(M * V, 4);
    const close = r.normal(M * V, 0.01); // KL ~ 5e-5: a difference of log-sum-exps would lose digits
    const far = r.normal(M * V, 1.5);
    for (const [what, noise, shift] of [
      ['small', close, 0],
      ['large, shifted', far, 30],
    ] as const) {
      const q = p.map((v, i) => v + noise[i] + shift);
      const want = await cpu.read(cpu.klDiv(cpu.upload(p, [M, V], 'f32'), cpu.upload(q, [M, V], 'f32')));
      const got = await backend.read(
        backend.klDiv(backend.upload(p, [M, V], 'f32'), backend.upload(q, [M, V], 'f32')),
      );
      for (let i = 0; i < M; i++) {
        const [g, w] = [got[2 * i], want[2 * i]];
        assert.ok(Math.abs(g - w) <= 1e-5 * w + 1e-9, `${what} V=${V} row ${i}: ${g} vs ${w}`);
        assert.equal(got[2 * i + 1], want[2 * i + 1], `${what} V=${V} row ${i}: argmax agreement`);
      }
      if (what === 'small') assert.ok(want[0] > 1e-5 && want[0] < 1e-4, `KL ${want[0]}`);
    }
  }
});

test('nll, columnStats, sumSquaredDiff match the CPU', { skip }, async () => {
  const r = rng(6);
  const [M, V] = [33, 1000];
  const targets = Int32Array.from({ length: M }, (_, i) => (i * 131) % V);
  const [lc, lg] = onBoth(r.normal(M * V, 4), [M, V]);
  await expectClose(gpu!.nll(lg, targets), cpu.nll(lc, targets), 1e-6, 'nll');
  const small = targets.map((t) => t % 300);
  const [sc, , st] = onBoth(r.normal(M * 300, 4), [M, 300]);
  await expectClose(tiny!.nll(st, small), cpu.nll(sc, small), 1e-6, 'nll windows');
  const [xc, xg, xt] = onBoth(r.normal(600 * 70), [600, 70]);
  const want = await cpu.columnStats(xc);
  for (const got of [await gpu!.columnStats(xg), await tiny!.columnStats(xt)]) {
    assert.deepEqual(got.absMax, want.absMax);
    assert.ok(relErr(got.absMean, want.absMean) < 1e-6);
  }
  const [yc, yg, yt] = onBoth(r.normal(600 * 70), [600, 70]);
  const ssd = await cpu.sumSquaredDiff(xc, yc);
  for (const got of [await gpu!.sumSquaredDiff(xg, yg), await tiny!.sumSquaredDiff(xt, yt)])
    assert.ok(Math.abs(got / ssd - 1) < 1e-6, `sumSquaredDiff ${got} vs ${ssd}`);
});

test('sliceRows, concatRows, transpose, toF32 match the CPU exactly', { skip }, async () => {
  const r = rng(7);
  for (const dtype of ['f32', 'bf16', 'f16'] as const) {
    const [xc, xg, xt] = onBoth(r.normal(90 * 13), [90, 13], dtype);
    const [yc, yg, yt] = onBoth(r.normal(7 * 13), [7, 13], dtype);
    const cases: [string, (b: Backend, x: Tensor, y: Tensor) => Tensor][] = [
      ['slice', (b, x) => b.sliceRows(x, 3, 77)],
      ['concat', (b, x, y) => b.concatRows([y, x, y])],
      ['transpose', (b, x) => b.transpose(x)],
      ['toF32', (b, x) => b.toF32(x)],
    ];
    for (const [what, op] of cases) {
      const want = op(cpu, xc, yc);
      for (const [b, x, y] of [
        [gpu!, xg, yg],
        [tiny!, xt, yt],
      ] as const) {
        const got = op(b, x, y);
        assert.deepEqual(got.shape, want.shape, `${what} ${dtype}`);
        assert.deepEqual(await b.read(got), await cpu.read(want), `${what} ${dtype}`);
      }
    }
  }
});

/** Inputs that hit every path: magnitudes spread per row, exact ties, zeros, -0, NaN, +-Inf. */
function quantInputs(rows: number, cols: number, seed: number): Float32Array {
  const r = rng(seed);
  const x = r.normal(rows * cols);
  for (let i = 0; i < rows; i++) {
    const scale = 10 ** Math.floor(r.uniform() * 8 - 4);
    const kind = i % 5;
    for (let j = 0; j < cols; j++) {
      const k = i * cols + j;
      // kind 1: few mantissa bits, so x / scale lands on .5 ties often
      x[k] = kind === 1 ? Math.round(x[k] * 8) / 4 : x[k] * scale;
      if (kind === 3 && j % 4 === 0) x[k] = 0;
    }
  }
  const specials = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, -0, 0, 1e-20, -3.5];
  specials.forEach((v, i) => {
    x[(2 * cols + 5 * i + 1) % x.length] = v;
  });
  if (rows > 4) x.fill(0, 4 * cols, 5 * cols); // an all-zero row
  if (rows > 6) x.fill(Number.NEGATIVE_INFINITY, 6 * cols, 7 * cols); // a row with no finite value
  return x;
}

function sameBits(got: Float32Array, want: Float32Array, what: string): void {
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < g.length; i++) {
    if (Number.isNaN(got[i]) && Number.isNaN(want[i])) continue;
    if (g[i] !== w[i])
      assert.fail(`${what}: element ${i}: got ${got[i]} (0x${g[i].toString(16)}), want ${want[i]}`);
  }
}

const FORMATS = [
  'int4-g32',
  'int4-g32-sym',
  'int3-g64-clip0.85',
  'int8-g128-sym-clip0.9',
  'int8-row-sym',
  'int4-row',
  'int8-tensor-sym',
  'int6-tensor',
  'int2-g16',
  ...[
    'mxint8',
    'mxint6',
    'mxint4',
    'mxint2',
    'mxfp8-e4m3',
    'mxfp8-e5m2',
    'mxfp6-e3m2',
    'mxfp6-e2m3',
    'mxfp4',
  ].flatMap((n) => [n, `${n}-even`]),
  'mxint8-16',
  'mxfp4-64-even',
  'fp8-e4m3-tensor',
  'fp8-e4m3-row',
  'fp8-e5m2-tensor',
  'fp8-e5m2-row',
  'nvfp4',
];

test('fakeQuant is bit-exact against src/formats for every format kind', { skip }, async () => {
  const [rows, cols] = [24, 256];
  const x = quantInputs(rows, cols, 8);
  const [xc, xg, xt] = onBoth(x, [rows, cols]);
  const [bc, bg] = onBoth(quantInputs(rows, cols, 9), [rows, cols], 'bf16');
  for (const name of FORMATS) {
    const spec = parseFormat(name);
    const want = await cpu.read(cpu.fakeQuant(xc, spec));
    sameBits(await gpu!.read(gpu!.fakeQuant(xg, spec)), want, name);
    sameBits(await tiny!.read(tiny!.fakeQuant(xt, spec)), want, `${name} windows`);
    sameBits(
      await gpu!.read(gpu!.fakeQuant(bg, spec)),
      await cpu.read(cpu.fakeQuant(bc, spec)),
      `${name} bf16`,
    );
  }
  // static activation scale (calibrated, per tensor): values saturate at +-128 * scale
  const fixed = { ...parseFormat('int8-tensor-sym'), staticScale: 0.01 };
  sameBits(await gpu!.read(gpu!.fakeQuant(xg, fixed)), await cpu.read(cpu.fakeQuant(xc, fixed)), 'static');
  // a 3-D tensor quantizes along its last dimension
  const [c3, g3] = onBoth(quantInputs(6, 64, 10), [2, 3, 64]);
  for (const name of ['int4-g32', 'int8-tensor-sym', 'mxfp4', 'nvfp4'])
    sameBits(
      await gpu!.read(gpu!.fakeQuant(g3, parseFormat(name))),
      await cpu.read(cpu.fakeQuant(c3, parseFormat(name))),
      `${name} 3-D`,
    );
  assert.throws(() => gpu!.fakeQuant(xg, parseFormat('int4-g100')), /does not divide/);
});

const rneDivProbe = {
  key: 'test:rneDivFrom',
  bindings: ['read', 'read', 'write'],
  code: () => `
@group(0) @binding(0) var<storage, read> X: array<u32>;
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;
${COMMON}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let i = id.x;
  if (i >= arrayLength(&X)) { return; }
  let b = S[i / (arrayLength(&X) / arrayLength(&S))];
  let exact = divRn(X[i], b);
  // the hardware quotient as a division within 2.5 ulp may give it: the exact one moved -2..2 ulp
  for (var d = 0u; d < 5u; d++) { O[i * 5u + d] = rneDivFrom(fv(exact + d - 2u), X[i], b); }
}`,
} as const;

test('rneDivFrom: quotients 2 ulp off the exact one round as the exact one, on and next to .5 ties', {
  skip,
}, async () => {
  const [rows, cols] = [8, 512];
  const { x, scales } = nearTies(rows, cols);
  const ctx = gpu!.ctx;
  const xs = ctx.uploadStorage(rows, cols, 'f32', new Uint8Array(x.buffer));
  const ss = ctx.uploadStorage(rows, 1, 'f32', new Uint8Array(scales.buffer));
  const out = ctx.allocStorage(rows * cols, 5, 'f32');
  const w = [xs, ss, out].map((st) => ctx.whole(st, 'probe').binding);
  ctx.dispatch(rneDivProbe, undefined, w, [Math.ceil((rows * cols) / 64)]);
  const got = await gpu!.read(new WebGpuTensor(gpu!, [rows * cols, 5], 'f32', out));
  for (let i = 0; i < rows * cols; i++) {
    const t = Math.fround(x[i] / scales[Math.floor(i / cols)]);
    const f = Math.floor(t);
    const want = t - f > 0.5 || (t - f === 0.5 && f % 2 !== 0) ? f + 1 : f;
    for (let d = 0; d < 5; d++)
      assert.equal(got[i * 5 + d], want, `x[${i}] = ${x[i]}, quotient moved ${d - 2} ulp`);
  }
  [xs, ss].forEach((st) => ctx.releaseStorage(st));
});

test('INT codes where x / scale sits on or a few ulp from a .5 tie equal the CPU', { skip }, async () => {
  const [rows, cols] = [16, 1024];
  const [xc, xg] = onBoth(nearTies(rows, cols).x, [rows, cols]);
  for (const name of ['int8-row-sym', 'int4-row', 'int8-g128-sym-clip0.9']) {
    const spec = parseFormat(name);
    sameBits(await gpu!.read(gpu!.fakeQuant(xg, spec)), await cpu.read(cpu.fakeQuant(xc, spec)), name);
  }
  const int8 = parseFormat('int8-row-sym') as IntSpec;
  const got = gpu!.quantizeRowsInt8(xg, int8);
  const want = cpu.quantizeRowsInt8(xc, int8);
  assert.deepEqual(await gpu!.read(got.codes), await cpu.read(want.codes));
  assert.deepEqual(await gpu!.read(got.scales), await cpu.read(want.scales));
});

test('llama-tiny perplexity on 2 windows of 512 is within 0.01% of the CPU backend', { skip }, async () => {
  const text = readEvalText(WIKITEXT).slice(0, 12000);
  const tokens = loadTokenizer(`${MODELS}llama-tiny`).encode(text);
  const opts = { seqLen: 512, maxWindows: 2, batch: 2 };
  const want = await perplexity(loadLlama(`${MODELS}llama-tiny`, cpu), tokens, opts);
  const model = loadLlama(`${MODELS}llama-tiny`, gpu!);
  const got = await perplexity(model, tokens, opts);
  assert.equal(got.windows, 2);
  assert.ok(Math.abs(got.ppl / want.ppl - 1) < 1e-4, `ppl ${got.ppl} vs CPU ${want.ppl}`);
  got.windowMeanNll.forEach((v, i) => assert.ok(Math.abs(v - want.windowMeanNll[i]) < 1e-4, `window ${i}`));
  // one window per forward pass gives the same window NLLs as the batched (default) pass
  const single = await perplexity(model, tokens, { ...opts, batch: 1 });
  assert.equal(defaultBatch(model, 512) >= 2, true);
  single.windowMeanNll.forEach((v, i) => assert.ok(Math.abs(v - got.windowMeanNll[i]) < 1e-5, `window ${i}`));
});

test('forward passes (activation-quantized too) and decode steps free what they allocate (device bytes stay flat)', {
  skip,
}, async () => {
  const model = loadLlama(`${MODELS}llama-tiny`, gpu!);
  const ids = Int32Array.from({ length: 64 }, (_, i) => (i * 31) % 500);
  const pass = async () => {
    const logits = model.forward(ids, { batch: 1, seqLen: 64 });
    await gpu!.read(logits);
    logits.dispose();
  };
  await pass();
  const afterOne = gpu!.ctx.liveBytes;
  for (let i = 0; i < 3; i++) await pass();
  assert.equal(gpu!.ctx.liveBytes, afterOne, 'forward');
  const cache = new KvCache(model, 64);
  const step = async (tokens: Int32Array) => {
    cache.reserve(tokens.length);
    const logits = model.forwardCached(tokens, cache);
    await gpu!.read(logits);
    logits.dispose();
  };
  await step(ids.subarray(0, 8));
  await step(ids.subarray(8, 9));
  const afterStep = gpu!.ctx.liveBytes;
  for (let i = 9; i < 14; i++) await step(ids.subarray(i, i + 1));
  assert.equal(gpu!.ctx.liveBytes, afterStep, 'decode');
  cache.dispose();
  // activation-quantized linears (W8A8 fake quantization): their quantized inputs are freed too
  for (const layer of model.layers)
    for (const lin of Object.values(layer.linears))
      lin.inputQuant = { spec: { kind: 'int', bits: 8, symmetric: true, granularity: 'row' } };
  await pass();
  const quantized = gpu!.ctx.liveBytes;
  for (let i = 0; i < 3; i++) await pass();
  assert.equal(gpu!.ctx.liveBytes, quantized, 'forward with quantized inputs');
});

test('reused uniforms and bind groups: a recycled page, the arena fallback or a submit ramp never changes results', {
  skip,
}, async () => {
  // one page of 256 parameter slots, filled many times over, in submits of 64 dispatches; then in
  // submits that start at one dispatch after each read and double up to 16
  for (const opts of [{ uniformPages: 1 }, { uniformPages: 1, firstSubmit: 1, dispatchesPerSubmit: 16 }]) {
    const small = await WebGpuBackend.create(opts);
    try {
      const table = ropeTable({
        headDim: 64,
        maxPositionEmbeddings: 4096,
        rope: { type: 'default', theta: 10000 },
      });
      const data = rng(9).normal(2 * 128, 1);
      const xc = cpu.upload(data, [2, 128], 'f32');
      const xg = small.upload(data, [2, 128], 'f32');
      const rope = (b: Backend, x: Tensor, first: number) =>
        b.rope(x, Int32Array.of(first, first + 1), 64, table);
      const outs = Array.from({ length: 700 }, (_, i) => ({
        got: rope(small, xg, i),
        want: rope(cpu, xc, i),
      }));
      for (const [i, o] of outs.entries()) await expectClose(o.got, o.want, 1e-6, `rope at ${i}`);
      // the same parameters and (pooled) buffers again: cached bind groups
      const hits = small.ctx.bindGroups?.hits ?? 0;
      for (let i = 0; i < 20; i++) {
        const got = rope(small, xg, i % 2);
        await expectClose(got, rope(cpu, xc, i % 2), 1e-6, `repeat ${i}`);
        got.dispose();
      }
      assert.ok((small.ctx.bindGroups?.hits ?? 0) >= hits + 18, 'repeated dispatches reuse their bind group');
    } finally {
      small.destroy();
    }
  }
});

test('createBackend: cpu, webgpu and auto', { skip }, async () => {
  assert.equal((await createBackend('cpu')).name, 'cpu');
  // auto passes over software adapters (CI's lavapipe): the CPU backend is faster than they are
  const info = (gpu as WebGpuBackend).adapterInfo;
  const software = /llvmpipe|lavapipe|swiftshader|software/i.test(
    `${info?.vendor ?? ''} ${info?.architecture ?? ''} ${info?.description ?? ''}`,
  );
  const b = await createBackend('auto');
  assert.equal(b.name, software ? 'cpu' : 'webgpu', JSON.stringify(info));
  if (b.name === 'webgpu') (b as WebGpuBackend).destroy();
  const forced = await createBackend('webgpu');
  assert.equal(forced.name, 'webgpu');
  (forced as WebGpuBackend).destroy();
  await assert.rejects(createBackend('tpu' as never), /--device must be/);
});

test('synth writes a loadable random checkpoint with the architecture, sane values, same on both backends', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-synth-'));
  try {
    // qwen2-7b's layout (q/k/v biases, GQA 7:1) at toy sizes
    const config = {
      ...synthConfig('qwen2-7b', 2),
      hidden_size: 224,
      intermediate_size: 96,
      num_attention_heads: 7,
      num_key_value_heads: 1,
      vocab_size: 300,
    };
    const files = writeSynthCheckpoint(dir, config, 3);
    assert.equal(files.length, 4); // embeddings, layer 0, layer 1, norm + head
    const ckpt = openCheckpoint(dir);
    assert.deepEqual(ckpt.info('model.layers.1.self_attn.k_proj.bias').shape, [32]);
    assert.deepEqual(ckpt.info('model.layers.0.mlp.down_proj.weight').shape, [224, 96]);
    assert.equal(ckpt.info('lm_head.weight').dtype, 'BF16');
    const w = bf16ToF32(ckpt.read('model.layers.0.mlp.up_proj.weight').data as Uint16Array);
    const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
    assert.ok(Math.abs(std - 0.02) < 0.002, `weight std ${std}`);
    assert.ok(bf16ToF32(ckpt.read('model.norm.weight').data as Uint16Array).every((v) => v === 1));
    ckpt.close();
    const ids = Int32Array.from({ length: 40 }, (_, i) => (i * 17) % 300);
    const want = await cpu.read(loadLlama(dir, cpu).forward(ids, { batch: 1, seqLen: 40 }));
    assert.ok(want.every(Number.isFinite) && want.some((v) => v !== 0));
    if (gpu) {
      const got = await gpu.read(loadLlama(dir, gpu).forward(ids, { batch: 1, seqLen: 40 }));
      assert.ok(relErr(got, want) < 1e-5);
    }
    assert.throws(() => synthConfig('gpt-5'), /unknown --like/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('GPTQ in the pipeline on WebGPU: the weights of whole-layer hook passes, the CPU first group', {
  skip,
}, async () => {
  const calib = randomCalibration(11, 4, 128);
  const recipe = resolveRecipe('gptq-w4g128');
  const staged = loadLlama(`${MODELS}llama-small`, gpu!);
  await quantizeModel(staged, recipe, calib);
  const whole = loadLlama(`${MODELS}llama-small`, gpu!);
  await wholeLayerGptq(whole, recipe, calib);
  await assertSameWeights(staged, whole);
  // the first group sees the same inputs on both backends: its Hessian differs only by f32 rounding.
  // Later groups drift apart (a flipped code moves every later input), as GPTQ does between arithmetics.
  const onCpu = loadLlama(`${MODELS}llama-small`, cpu);
  await quantizeModel(onCpu, recipe, calib);
  for (const name of ['q_proj', 'k_proj', 'v_proj'] as const) {
    const got = await gpu!.read(staged.layers[0].linears[name].weight);
    const want = await cpu.read(onCpu.layers[0].linears[name].weight);
    assert.ok(relErr(got, want) < 1e-5, `layer 0 ${name}: ${relErr(got, want)}`);
  }
});
