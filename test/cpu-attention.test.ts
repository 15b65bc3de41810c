import assert from 'node:assert/strict';
import { test } from 'node:test';
import { wasmAttention } from '../src/tensor/cpu/attention-wasm.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import type { AttentionShape } from '../src/tensor/tensor.ts';

/** Causal GQA attention in float64, one (sequence, head, query row) at a time. */
function naiveAttention(q: Float32Array, k: Float32Array, v: Float32Array, s: AttentionShape): Float64Array {
  const { batch, seqLen, numHeads, numKvHeads, headDim: D } = s;
  const out = new Float64Array(q.length);
  const qStride = numHeads * D;
  const kvStride = numKvHeads * D;
  for (let b = 0; b < batch; b++)
    for (let h = 0; h < numHeads; h++) {
      const kvh = Math.floor(h / (numHeads / numKvHeads));
      for (let i = 0; i < seqLen; i++) {
        const qo = (b * seqLen + i) * qStride + h * D;
        const scores: number[] = [];
        for (let j = 0; j <= i; j++) {
          const ko = (b * seqLen + j) * kvStride + kvh * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qo + d] * k[ko + d];
          scores.push(dot / Math.sqrt(D));
        }
        const max = Math.max(...scores);
        const weights = scores.map((x) => Math.exp(x - max));
        const total = weights.reduce((a, x) => a + x, 0);
        for (let j = 0; j <= i; j++) {
          const vo = (b * seqLen + j) * kvStride + kvh * D;
          for (let d = 0; d < D; d++) out[qo + d] += (weights[j] / total) * v[vo + d];
        }
      }
    }
  return out;
}

/** Deterministic values in [-amp, amp). */
function values(n: number, seed: number, amp: number): Float32Array {
  let x = seed;
  return Float32Array.from({ length: n }, () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return (x / 2 ** 31 - 0.5) * 2 * amp;
  });
}

function check(s: AttentionShape, amp: number, tolerance = 2e-5): void {
  const cpu = new CpuBackend();
  const rows = s.batch * s.seqLen;
  const q = values(rows * s.numHeads * s.headDim, 1, amp);
  const k = values(rows * s.numKvHeads * s.headDim, 2, amp);
  const v = values(rows * s.numKvHeads * s.headDim, 3, 1);
  const got = cpu.f32(
    cpu.attention(
      cpu.upload(q, [rows, s.numHeads * s.headDim], 'f32'),
      cpu.upload(k, [rows, s.numKvHeads * s.headDim], 'f32'),
      cpu.upload(v, [rows, s.numKvHeads * s.headDim], 'f32'),
      s,
    ),
  );
  const want = naiveAttention(q, k, v, s);
  let maxAbs = 0;
  let maxErr = 0;
  for (let i = 0; i < want.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(want[i]));
    maxErr = Math.max(maxErr, Math.abs(got[i] - want[i]));
  }
  assert.ok(maxAbs > 0.05, `degenerate output (max |out| ${maxAbs})`);
  assert.ok(
    maxErr < tolerance * maxAbs,
    `max error ${maxErr} against max |out| ${maxAbs} for ${JSON.stringify(s)}`,
  );
}

test('the WebAssembly attention kernel is available here', () => {
  assert.ok(wasmAttention(), 'WebAssembly SIMD attention did not build');
});

for (const headDim of [64, 128])
  test(`causal GQA attention matches float64, odd seqLen, batch 2, head_dim ${headDim}`, () => {
    // amp 2: scores of several units, so the softmax is far from uniform and the max matters
    check({ batch: 2, seqLen: 37, numHeads: 4, numKvHeads: 2, headDim }, 2);
  });

test('attention for short sequences (1 to 9 rows), head_dim 8, one kv head per query head', () => {
  for (let seqLen = 1; seqLen <= 9; seqLen++)
    check({ batch: 3, seqLen, numHeads: 2, numKvHeads: 2, headDim: 8 }, 1);
});

test('attention with scores in the hundreds (exp would overflow without the max) and 8 heads over 1 kv head', () => {
  // f32 scores of ~500 carry ~3e-5 absolute rounding into the weights, hence the looser bound
  check({ batch: 1, seqLen: 70, numHeads: 8, numKvHeads: 1, headDim: 64 }, 20, 1e-4);
});
