/**
 * int8 x int8 -> int32 GEMM on both backends against a naive loop written here: exact integers,
 * odd shapes (edges of every tile), and the extreme values -128 / 127 where int8 products overflow
 * 16 bits. The subgroup-matrix kernel runs only where the adapter has it (not on lavapipe); the
 * dot4 kernel runs on every adapter.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import type { Backend } from '../src/tensor/tensor.ts';
import { openDevice, WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import { rng } from './helpers.ts';

const probe = await openDevice();
probe?.device.destroy();
const skip = probe ? false : 'no WebGPU adapter';
const gpu = probe ? await WebGpuBackend.create() : undefined;
const dot4 = probe ? await WebGpuBackend.create({ int8: 'dot4' }) : undefined;

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
