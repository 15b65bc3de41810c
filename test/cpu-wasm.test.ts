import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { wasmMatmul } from '../src/tensor/cpu/wasm.ts';
import { LOADER, rng } from './helpers.ts';

const cpu = new CpuBackend();
/** This file runs again in a child process with the multiply-and-add module (see the last test). */
const FALLBACK_RUN = process.env.LLMQ_WASM_FMA === '0';

/**
 * x w^T + bias as one f32 sum per output over k in order, then + bias: each step rounded once
 * (fused multiply-add; the f64 product of two f32 is exact) or product and sum rounded apart.
 */
function f32Linear(
  x: Float32Array,
  w: Float32Array,
  bias: Float32Array,
  N: number,
  K: number,
  fused: boolean,
) {
  const M = x.length / K;
  const out = new Float32Array(M * N);
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let acc = 0;
      for (let k = 0; k < K; k++) {
        const product = x[i * K + k] * w[j * K + k];
        acc = Math.fround(acc + (fused ? product : Math.fround(product)));
      }
      out[i * N + j] = acc + bias[j];
    }
  return out;
}

function firstMismatch(got: Float32Array, want: Float32Array): string | undefined {
  const i = got.findIndex((v, k) => !Object.is(v, want[k]));
  return i < 0 ? undefined : `[${i}] ${got[i]} vs ${want[i]}`;
}

// Row tails of 1-3, column tails (N not a multiple of 8), odd K (packed one value at a time), K past
// 512 (sums continued over K blocks), more than 64 rows (row chunks), and shapes large enough to
// split over the threads by rows of x (M > N) and by panels of w (N >= M).
const SHAPES = [
  [1, 8, 4],
  [2, 3, 5],
  [3, 17, 16],
  [6, 9, 1031],
  [303, 64, 520],
  [66, 300, 136],
] as const;

test('wasm linear is one f32 sum per output in k order, then + bias, on every tile edge', async () => {
  const wasm = wasmMatmul();
  assert.ok(wasm, 'WebAssembly SIMD is available');
  if (FALLBACK_RUN) assert.equal(wasm.fma, false);
  const r = rng(7);
  for (const [M, N, K] of SHAPES) {
    const [x, w, bias] = [r.normal(M * K), r.normal(N * K), r.normal(N)];
    const got = await cpu.read(
      cpu.linear(cpu.upload(x, [M, K], 'f32'), cpu.upload(w, [N, K], 'f32'), cpu.upload(bias, [N], 'f32')),
    );
    const separate = firstMismatch(got, f32Linear(x, w, bias, N, K, false));
    // relaxed SIMD multiply-add is fused where the CPU has FMA, a multiply and an add elsewhere
    const fused = wasm.fma ? firstMismatch(got, f32Linear(x, w, bias, N, K, true)) : 'not fused';
    assert.ok(separate === undefined || fused === undefined, `${M}x${N}x${K}: ${separate}; ${fused}`);
  }
});

test('wasm linear without a bias and with bf16 and f16 weights', async () => {
  const r = rng(8);
  const [M, N, K] = [5, 12, 24];
  const x = r.normal(M * K);
  const bf16 = Uint16Array.from(new Uint32Array(r.normal(N * K).buffer), (b) => b >>> 16);
  const bf16Values = new Float32Array(Uint32Array.from(bf16, (b) => b << 16).buffer);
  // normal f16 numbers: sign, exponent 10..20, 10 mantissa bits
  const f16 = Uint16Array.from({ length: N * K }, () => {
    const bits = Math.floor(r.uniform() * 2 ** 11);
    return ((bits & 1) << 15) | ((10 + Math.floor(r.uniform() * 11)) << 10) | (bits >> 1);
  });
  const f16Values = Float32Array.from(
    f16,
    (h) => (h >> 15 ? -1 : 1) * 2 ** (((h >> 10) & 31) - 15) * (1 + (h & 1023) / 1024),
  );
  for (const [dtype, bits, values] of [
    ['bf16', bf16, bf16Values],
    ['f16', f16, f16Values],
  ] as const) {
    const got = await cpu.read(cpu.linear(cpu.upload(x, [M, K], 'f32'), cpu.upload(bits, [N, K], dtype)));
    const zeros = new Float32Array(N);
    const want = [false, true].map((fused) => firstMismatch(got, f32Linear(x, values, zeros, N, K, fused)));
    assert.ok(want.includes(undefined), `${dtype}: ${want.join('; ')}`);
  }
});

test('the multiply-and-add module (LLMQ_WASM_FMA=0) passes the same tests', { skip: FALLBACK_RUN }, () => {
  const env: NodeJS.ProcessEnv = { ...process.env, LLMQ_WASM_FMA: '0' };
  delete env.NODE_TEST_CONTEXT;
  execFileSync(process.execPath, ['--import', LOADER, fileURLToPath(import.meta.url)], {
    env,
    stdio: 'pipe',
  });
});
