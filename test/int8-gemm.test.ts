/**
 * int8 x int8 -> int32 GEMM on both backends against a naive loop written here: exact integers,
 * odd shapes (edges of every tile), and the extreme values -128 / 127 where int8 products overflow
 * 16 bits. The subgroup-matrix kernel runs only where the adapter has it (not on lavapipe); the
 * dot4 kernel runs on every adapter.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { encode, parseFormat } from '../src/formats/index.ts';
import type { IntSpec } from '../src/formats/spec.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { int8Linear, useInt8Matmuls } from '../src/model/int8.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { f32ToBf16 } from '../src/tensor/dtype.ts';
import type { Backend } from '../src/tensor/tensor.ts';
import { openDevice, WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import '../src/quant/methods.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { defineRecipe, resolveRecipe } from '../src/quant/recipe.ts';
import { MODELS, rng, WIKITEXT } from './helpers.ts';

const probe = await openDevice();
probe?.device.destroy();
const skip = probe ? false : 'no WebGPU adapter';
const gpu = probe ? await WebGpuBackend.create() : undefined;
const dot4 = probe ? await WebGpuBackend.create({ int8: 'dot4' }) : undefined;
/** also reads the GEMV's codes a word at a time (gemv.chunks off), in the other loop */
const dot4Big = probe
  ? await WebGpuBackend.create({
      int8: 'dot4',
      dot4Tile: { t: 8, bkw: 8 },
      gemv: { chunks: false, unroll: 4 },
    })
  : undefined;

function randomInt8(n: number, seed: number): Int8Array {
  const r = rng(seed);
  const out = new Int8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(r.uniform() * 256) - 128;
  return out;
}

function naive(a: Int8Array, b: Int8Array, M: number, N: number, K: number): Int32Array {
  const c = new Int32Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += a[m * K + k] * b[n * K + k];
      c[m * N + n] = s;
    }
  return c;
}

async function check(backend: Backend, M: number, N: number, K: number, seed: number): Promise<void> {
  const a = randomInt8(M * K, seed);
  const b = randomInt8(N * K, seed + 1);
  // extremes in the first row / column
  for (let k = 0; k < K; k++) {
    a[k] = -128;
    b[k] = k % 2 ? 127 : -128;
  }
  const ta = backend.upload(a, [M, K], 'i8');
  const tb = backend.upload(b, [N, K], 'i8');
  const c = backend.matmulInt8(ta, tb);
  assert.deepEqual(c.shape, [M, N]);
  assert.equal(c.dtype, 'i32');
  const got = await backend.read(c);
  const want = naive(a, b, M, N, K);
  let bad = 0;
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) bad++;
  assert.equal(bad, 0, `${backend.name} ${M}x${N}x${K}: ${bad} of ${want.length} outputs differ`);
  // values that need more than 24 bits would not survive the f32 read: keep the test honest
  assert.ok(K * 128 * 128 < 2 ** 24);
  for (const t of [ta, tb, c]) t.dispose();
}

const SHAPES: [number, number, number][] = [
  [1, 1, 4],
  // up to 4 rows: the matrix-vector kernel (decoding); K a multiple of 16: vec4 words, some lanes' last
  // unrolled words out of range
  [1, 300, 1020],
  [1, 300, 1008],
  [2, 33, 496],
  [4, 9, 16],
  [3, 17, 40],
  [4, 129, 516],
  [5, 7, 12],
  [64, 64, 64],
  [70, 130, 100],
  [128, 48, 256],
  [33, 200, 516],
];

test('CPU matmulInt8 equals the naive loop', async () => {
  const cpu = new CpuBackend();
  for (const [i, [M, N, K]] of SHAPES.entries()) await check(cpu, M, N, K, 10 + i);
});

test('WebGPU dot4 int8 GEMM is exact on odd shapes', { skip }, async () => {
  assert.equal(dot4!.int8.path, 'dot4');
  for (const [i, [M, N, K]] of SHAPES.entries()) await check(dot4!, M, N, K, 20 + i);
  for (const [i, [M, N, K]] of SHAPES.entries()) await check(dot4Big!, M, N, K, 40 + i);
});

test('WebGPU default int8 GEMM is exact (subgroup matrices where offered)', { skip }, async (t) => {
  t.diagnostic(`int8 path: ${gpu!.int8.path}${gpu!.int8.reason ? ` (${gpu!.int8.reason})` : ''}`);
  for (const [i, [M, N, K]] of [...SHAPES, [96, 80, 160] as [number, number, number]].entries())
    await check(gpu!, M, N, K, 30 + i);
});

test('matmulInt8 rejects mismatched and non-i8 operands with one line', () => {
  const cpu = new CpuBackend();
  const a = cpu.upload(new Int8Array(8), [2, 4], 'i8');
  assert.throws(() => cpu.matmulInt8(a, cpu.upload(new Int8Array(8), [1, 8], 'i8')), /does not match/);
  assert.throws(() => cpu.matmulInt8(a, cpu.upload(new Float32Array(8), [2, 4], 'f32')), /expected i8/);
  assert.throws(
    () =>
      cpu.matmulInt8(cpu.upload(new Int8Array(6), [2, 3], 'i8'), cpu.upload(new Int8Array(6), [2, 3], 'i8')),
    /multiple of 4/,
  );
});

const INT8_ROW = parseFormat('int8-row-sym');

for (const [name, backend] of [
  ['CPU', new CpuBackend()],
  ['WebGPU', gpu],
] as [string, Backend | undefined][]) {
  test(`${name} quantizeRowsInt8: codes x scale equal fakeQuant bit for bit (int8-row-sym, int4-row-sym clipped)`, {
    skip: backend ? false : 'no WebGPU adapter',
  }, async () => {
    const b = backend!;
    // many rows; and few rows of many words (several passes of the workgroup a row, the last partial)
    for (const [M, K] of [
      [37, 132],
      [4, 2200],
    ]) {
      const x = rng(7).normal(M * K, 2);
      x[5] = 0.5 * 2 ** -20; // tiny
      for (let k = 0; k < K; k++) x[3 * K + k] = 0; // an all-zero row
      // f32 rows (WebGPU: loaded four values a vec4) and bf16 rows (loaded one value at a time)
      const bf16 = b.upload(f32ToBf16(x), [M, K], 'bf16');
      for (const [t, spec] of [
        [b.upload(x, [M, K], 'f32'), undefined],
        [b.upload(x, [M, K], 'f32'), { ...parseFormat('int4-row-sym'), clip: 0.9 } as IntSpec],
        [bf16, undefined],
      ] as const) {
        const { codes, scales } = b.quantizeRowsInt8(t, spec);
        assert.equal(codes.dtype, 'i8');
        const q = await b.read(codes);
        const s = await b.read(scales);
        const fq = await b.read(b.fakeQuant(t, spec ?? INT8_ROW));
        const lim = spec ? 8 : 128;
        let clamped = 0;
        for (let m = 0; m < M; m++)
          for (let k = 0; k < K; k++) {
            assert.ok(q[m * K + k] >= -lim && q[m * K + k] <= lim - 1);
            if (q[m * K + k] === -lim || q[m * K + k] === lim - 1) clamped++;
            assert.equal(Math.fround(q[m * K + k] * s[m]), fq[m * K + k], `[${m}, ${k}]`);
          }
        assert.ok(!spec || clamped > M, 'clip 0.9 saturates the largest values of each row');
      }
    }
  });

  test(`${name} scaleInt32 equals f32(acc) * row scale * column scale + bias`, {
    skip: backend ? false : 'no WebGPU adapter',
  }, async () => {
    const b = backend!;
    const [M, N] = [9, 21];
    const acc = Int32Array.from({ length: M * N }, (_, i) => ((i * 7919) % 20001) - 10000);
    const rs = rng(8).normal(M);
    const cs = rng(9).normal(N);
    const bias = rng(10).normal(N);
    const got = await b.read(
      b.scaleInt32(
        b.upload(acc, [M, N], 'i32'),
        b.upload(rs, [M], 'f32'),
        b.upload(cs, [N], 'f32'),
        b.upload(bias, [N], 'f32'),
      ),
    );
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        const want = Math.fround(Math.fround(Math.fround(acc[m * N + n] * rs[m]) * cs[n]) + bias[n]);
        assert.ok(Math.abs(got[m * N + n] - want) <= 1e-6 * Math.abs(want) + 1e-30, `[${m}, ${n}]`);
      }
  });

  test(`${name} int8Linear equals the f32 GEMM over fake-quantized x and W to f32 rounding`, {
    skip: backend ? false : 'no WebGPU adapter',
  }, async () => {
    const b = backend!;
    const [M, N, K] = [19, 40, 256];
    const x = b.upload(rng(11).normal(M * K, 3), [M, K], 'f32');
    const wq = b.fakeQuant(b.upload(rng(12).normal(N * K, 0.05), [N, K], 'f32'), INT8_ROW);
    const bias = b.upload(rng(13).normal(N), [N], 'f32');
    const enc = encode(await b.read(wq), N, K, INT8_ROW);
    const w = {
      codes: b.upload(
        Int8Array.from(enc.codes, (c) => c - 128),
        [N, K],
        'i8',
      ),
      scales: b.upload(enc.scales, [N], 'f32'),
    };
    const want = await b.read(b.linear(b.fakeQuant(x, INT8_ROW), wq, bias));
    const got = await b.read(int8Linear(b, x, w, bias));
    let worst = 0;
    let scale = 0;
    for (let i = 0; i < want.length; i++) {
      worst = Math.max(worst, Math.abs(got[i] - want[i]));
      scale = Math.max(scale, Math.abs(want[i]));
    }
    worst /= scale;
    assert.ok(worst < 1e-5, `relative error ${worst}`);
    // in row chunks (as for activations larger than one binding): the same values
    assert.deepEqual(await b.read(int8Linear(b, x, w, bias, undefined, 8)), got);
  });

  test(`${name} W8A8 llama-tiny through the int8 GEMM matches the fake-quant path`, {
    skip: backend ? false : 'no WebGPU adapter',
  }, async () => {
    const b = backend!;
    const model = loadLlama(`${MODELS}llama-tiny`, b);
    await quantizeModel(model, resolveRecipe('rtn-w8a8'), undefined);
    const tokens = loadTokenizer(`${MODELS}llama-tiny`).encode(readEvalText(WIKITEXT).slice(0, 6000));
    const opts = { seqLen: 256, maxWindows: 2 };
    const fake = await perplexity(model, tokens, opts);
    assert.equal(useInt8Matmuls(model), 7 * model.layers.length);
    const real = await perplexity(model, tokens, opts);
    // per-token INT8 is discontinuous: last-bit differences of one linear's output flip rounding
    // decisions of the next activation quantization, so the model-level match is 0.3%, not 1e-6
    assert.ok(Math.abs(real.ppl / fake.ppl - 1) < 3e-3, `int8 ${real.ppl} vs fake-quant ${fake.ppl}`);
    assert.notEqual(real.ppl, fake.ppl, 'the integer path ran (its rounding differs in the last bits)');
  });

  test(`${name} W4A4 (per-channel weights, per-token acts) llama-tiny through the int8 GEMM matches fake-quant`, {
    skip: backend ? false : 'no WebGPU adapter',
  }, async () => {
    const b = backend!;
    const model = loadLlama(`${MODELS}llama-tiny`, b);
    const recipe = defineRecipe('w4a4-row', {
      description: 'W4A4 per channel',
      weights: 'int4-row-sym',
      activations: 'int4-row-sym',
    });
    await quantizeModel(model, recipe, undefined);
    const tokens = loadTokenizer(`${MODELS}llama-tiny`).encode(readEvalText(WIKITEXT).slice(0, 6000));
    const opts = { seqLen: 256, maxWindows: 2 };
    const fake = await perplexity(model, tokens, opts);
    assert.equal(useInt8Matmuls(model), 7 * model.layers.length);
    const real = await perplexity(model, tokens, opts);
    // 4-bit activation codes flip more often than 8-bit ones on last-bit differences (see W8A8)
    assert.ok(Math.abs(real.ppl / fake.ppl - 1) < 1e-2, `int GEMM ${real.ppl} vs fake-quant ${fake.ppl}`);
  });
}
