/**
 * CPU benchmarks: f32 matmul GFLOP/s against numpy in the same run, and llama-small forward tokens/s.
 *   npm run bench            (appends to BENCHMARKS.md; --no-write to only print)
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { loadLlama } from '../src/model/llama-dir.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { threadCount } from '../src/tensor/cpu/pool.ts';
import { publish, type Row, table } from './report.ts';

const cpu = new CpuBackend();
const loadAverage = () => os.loadavg()[0].toFixed(1);
const loadBefore = loadAverage();
const SHAPES: [number, number, number][] = [
  [512, 1024, 384],
  [512, 384, 1024],
  [2048, 8192, 384],
  [2048, 2048, 2048],
];

function timeBest(fn: () => void, minSeconds = 1): number {
  let best = Number.POSITIVE_INFINITY;
  const end = performance.now() + minSeconds * 1000;
  do {
    const t = performance.now();
    fn();
    best = Math.min(best, performance.now() - t);
  } while (performance.now() < end);
  return best / 1000;
}

function numpyGflops(M: number, N: number, K: number): number {
  const script = `
import numpy as np, time
a = np.random.rand(${M}, ${K}).astype(np.float32); b = np.random.rand(${N}, ${K}).astype(np.float32)
best = 1e9; end = time.perf_counter() + 1
while True:
    t = time.perf_counter(); a @ b.T; best = min(best, time.perf_counter() - t)
    if time.perf_counter() > end: break
print(2 * ${M} * ${N} * ${K} / best / 1e9)`;
  return Number(execFileSync('python3', ['-c', script]).toString().trim());
}

const rows: Row[] = [];
for (const [M, N, K] of SHAPES) {
  const x = cpu.upload(Float32Array.from({ length: M * K }, Math.random), [M, K], 'f32');
  const w = cpu.upload(Float32Array.from({ length: N * K }, Math.random), [N, K], 'f32');
  const ours = (2 * M * N * K) / timeBest(() => cpu.linear(x, w)) / 1e9;
  const numpy = numpyGflops(M, N, K);
  rows.push({
    'M x N x K': `${M}x${N}x${K}`,
    'llmq GFLOP/s': ours,
    'numpy GFLOP/s': numpy,
    ratio: ours / numpy,
  });
}

const model = loadLlama(new URL('../../shared/models/llama-small', import.meta.url).pathname, cpu);
const ids = Int32Array.from({ length: 512 }, (_, i) => (i * 7919) % 8192);
const seconds = timeBest(() => model.forward(ids, { batch: 1, seqLen: 512 }), 3);
const fwd = `llama-small forward, 1 x 512 tokens: ${(512 / seconds).toFixed(0)} tokens/s (${seconds.toFixed(3)} s per window)`;

// one layer's attention of that forward pass (the model calls it once per layer)
const attentionShape = { batch: 1, seqLen: 512, numHeads: 6, numKvHeads: 2, headDim: 64 };
const heads = (n: number) =>
  cpu.upload(Float32Array.from({ length: 512 * n * 64 }, Math.random), [512, n * 64], 'f32');
const [aq, ak, av] = [heads(6), heads(2), heads(2)];
const attentionMs = 1000 * timeBest(() => cpu.attention(aq, ak, av, attentionShape).dispose());
const attention = `attention of one layer (causal, 512 tokens, 6 heads over 2 kv heads, head_dim 64): ${attentionMs.toFixed(1)} ms, x8 layers a window`;

publish(
  'CPU matmul and forward',
  'npm run bench',
  `${table(rows)}\n\n${fwd}; ${attention}; ${threadCount()} threads; load average ${loadBefore} before, ${loadAverage()} after (other processes on the cores skew both columns).`,
  'numpy uses OpenBLAS (AVX-512/AVX2 FMA kernels). llmq runs WebAssembly SIMD on every core ' +
    '(src/tensor/cpu/wasm.ts): the threads copy x and w into the wasm memory and pack them (x in blocks of 4 ' +
    'rows, w in panels of 8 rows, both k-major), then each 4x8 output tile is 8 vector accumulators fed by ' +
    'broadcast loads of x and vector loads of w, with relaxed-SIMD fused multiply-adds (behind ' +
    '--experimental-wasm-relaxed-simd in Node 20, set when the module is built; separate multiply and add ' +
    'where it does not validate). What limits it: wasm SIMD is 128 bits wide, and V8 runs a loop of nothing ' +
    'but independent FMAs on registers at ~59 GFLOP/s a core here, against ~100 for OpenBLAS, so the ceiling ' +
    'is ~0.55-0.6 of numpy. The tile reaches ~52 GFLOP/s a core, what that loop does with only 8 ' +
    'accumulators (just enough chains to hide the FMA latency); larger tiles spill, because TurboFan ' +
    'schedules every load of the loop body ahead of the arithmetic. Copying and packing cost 2-10% a call. ' +
    'The previous kernel (2x4 dot-product tiles, separate multiply and add) ran these shapes at 49-57 ' +
    'GFLOP/s (ratio 0.26-0.29), the scalar TypeScript one before it at 5-9. In the forward pass the ' +
    'matmuls take ~0.2 s of the window. Attention is WebAssembly SIMD too (src/tensor/cpu/attention-wasm.ts): ' +
    'per block of 4 query rows of a head, 4x8 score tiles against K packed in panels of 8 keys, a vectorized ' +
    'exp polynomial for the softmax, and 4x8 tiles of P V, all f32, the (head, block) pairs split over the ' +
    'threads; it replaced scalar f64 TypeScript that took ~60-100 ms a layer, ~0.5-0.8 s of the window. ' +
    'Most of what is left besides the matmuls is elementwise TypeScript: siluMul ~0.11 s, residual adds ~0.04 s.',
);
