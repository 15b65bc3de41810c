import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { maxRelErr, rng } from './helpers.ts';

const cpu = new CpuBackend();

function naiveLinear(x: Float32Array, w: Float32Array, M: number, N: number, K: number, bias?: Float32Array) {
  const out = new Float64Array(M * N);
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let s = bias ? bias[j] : 0;
      for (let k = 0; k < K; k++) s += x[i * K + k] * w[j * K + k];
      out[i * N + j] = s;
    }
  return out;
}

test('linear matches a naive matmul on odd shapes, in one thread and split across threads', async () => {
  const r = rng(1);
  for (const [M, N, K] of [
    [1, 1, 1],
    [5, 7, 3],
    [37, 130, 65],
    [300, 9, 64],
    [37, 130, 64],
    [3, 5, 8],
    [64, 1024, 384],
  ]) {
    const x = r.normal(M * K);
    const w = r.normal(N * K);
    const bias = r.normal(N);
    const got = await cpu.read(
      cpu.linear(cpu.upload(x, [M, K], 'f32'), cpu.upload(w, [N, K], 'f32'), cpu.upload(bias, [N], 'f32')),
    );
    assert.ok(maxRelErr(got, naiveLinear(x, w, M, N, K, bias)) < 1e-6, `${M}x${N}x${K}`);
  }
});

test('linear widens bf16 and f16 weights exactly', async () => {
  // bf16 0x3fc0 = 1.5, 0xc000 = -2; f16 0x3e00 = 1.5, 0xc000 = -2, 0x0001 = 2^-24
  const x = cpu.upload(new Float32Array([1, 2]), [1, 2], 'f32');
  const bf = await cpu.read(cpu.linear(x, cpu.upload(new Uint16Array([0x3fc0, 0xc000]), [1, 2], 'bf16')));
  assert.deepEqual([...bf], [1.5 - 4]);
  const f16 = await cpu.read(cpu.upload(new Uint16Array([0x3e00, 0xc000, 0x0001, 0x7c00]), [4], 'f16'));
  assert.deepEqual([...f16], [1.5, -2, 2 ** -24, Number.POSITIVE_INFINITY]);
});

test('attention equals a naive causal GQA softmax(QK^T/sqrt(d))V', async () => {
  const r = rng(2);
  const [batch, seqLen, H, Hkv, D] = [2, 9, 4, 2, 8];
  const rows = batch * seqLen;
  const q = r.normal(rows * H * D);
  const k = r.normal(rows * Hkv * D);
  const v = r.normal(rows * Hkv * D);
  const got = await cpu.read(
    cpu.attention(
      cpu.upload(q, [rows, H * D], 'f32'),
      cpu.upload(k, [rows, Hkv * D], 'f32'),
      cpu.upload(v, [rows, Hkv * D], 'f32'),
      {
        batch,
        seqLen,
        numHeads: H,
        numKvHeads: Hkv,
        headDim: D,
      },
    ),
  );
  const want = new Float64Array(rows * H * D);
  for (let b = 0; b < batch; b++)
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / Hkv));
      for (let i = 0; i < seqLen; i++) {
        const logits: number[] = [];
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let d = 0; d < D; d++)
            s += q[((b * seqLen + i) * H + h) * D + d] * k[((b * seqLen + j) * Hkv + g) * D + d];
          logits.push(s / Math.sqrt(D));
        }
        const m = Math.max(...logits);
        const e = logits.map((l) => Math.exp(l - m));
        const z = e.reduce((a, c) => a + c, 0);
        for (let d = 0; d < D; d++) {
          let s = 0;
          for (let j = 0; j <= i; j++) s += (e[j] / z) * v[((b * seqLen + j) * Hkv + g) * D + d];
          want[((b * seqLen + i) * H + h) * D + d] = s;
        }
      }
    }
  assert.ok(maxRelErr(got, want) < 1e-6);
});

test('rmsnorm, rope, siluMul and nll against hand formulas', async () => {
  const x = cpu.upload(new Float32Array([3, 4, 0, 0]), [1, 4], 'f32');
  // rms = sqrt((9 + 16) / 4) = 2.5 -> [1.2, 1.6, 0, 0] times weight [1, 2, 1, 1]
  const n = await cpu.read(cpu.rmsnorm(x, cpu.upload(new Float32Array([1, 2, 1, 1]), [4], 'f32'), 0));
  assert.ok(Math.abs(n[0] - 1.2) < 1e-6 && Math.abs(n[1] - 3.2) < 1e-6);
  // rope with invFreq [1, 0.5] at position 1: pairs (x0, x2) rotated by 1 rad, (x1, x3) by 0.5 rad
  const rq = await cpu.read(
    cpu.rope(cpu.upload(new Float32Array([1, 1, 0, 0]), [1, 4], 'f32'), new Int32Array([1]), 4, {
      invFreq: new Float32Array([1, 0.5]),
      attentionScaling: 1,
    }),
  );
  const want = [Math.cos(1), Math.cos(0.5), Math.sin(1), Math.sin(0.5)];
  rq.forEach((v, i) => assert.ok(Math.abs(v - want[i]) < 1e-6));
  const s = await cpu.read(
    cpu.siluMul(
      cpu.upload(new Float32Array([0, 2]), [2], 'f32'),
      cpu.upload(new Float32Array([5, 3]), [2], 'f32'),
    ),
  );
  assert.ok(Math.abs(s[0]) < 1e-7 && Math.abs(s[1] - (3 * 2) / (1 + Math.exp(-2))) < 1e-5);
  // NLL of target 1 under logits [0, ln 3]: -log(3/4)
  const nll = await cpu.read(
    cpu.nll(cpu.upload(new Float32Array([0, Math.log(3)]), [1, 2], 'f32'), new Int32Array([1])),
  );
  assert.ok(Math.abs(nll[0] + Math.log(0.75)) < 1e-6);
});

test('klDiv: hand values, invariance to a shift, and agreement of the argmax', async () => {
  // P = (1/2, 1/2), Q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); argmax 0 vs 0 (tie -> lowest)
  // P = (1/4, 3/4) as logits [0, ln 3] + 7, Q = softmax([0, 0]): KL = 1/4 ln(1/2) + 3/4 ln(3/2); argmax 1 vs 0
  const p = cpu.upload(new Float32Array([0, 0, 7, 7 + Math.log(3)]), [2, 2], 'f32');
  const q = cpu.upload(new Float32Array([Math.log(3), 0, -5, -5]), [2, 2], 'f32');
  const out = await cpu.read(cpu.klDiv(p, q));
  assert.ok(Math.abs(out[0] - 0.5 * Math.log(4 / 3)) < 1e-7, `${out[0]}`);
  assert.equal(out[1], 1);
  assert.ok(Math.abs(out[2] - (0.25 * Math.log(0.5) + 0.75 * Math.log(1.5))) < 1e-7, `${out[2]}`);
  assert.equal(out[3], 0);
  const self = await cpu.read(cpu.klDiv(p, p));
  assert.deepEqual(Array.from(self), [0, 1, 0, 1]);
  assert.throws(() => cpu.klDiv(p, cpu.upload(new Float32Array(6), [2, 3], 'f32')), /one shape/);
});

test('transpose puts x[r, c] at [c, r] on shapes that are not whole tiles', async () => {
  const r = rng(3);
  for (const [M, N] of [
    [70, 45],
    [1, 33],
    [64, 32],
  ]) {
    const x = r.normal(M * N);
    const got = await cpu.read(cpu.transpose(cpu.upload(x, [M, N], 'f32')));
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) assert.equal(got[j * M + i], x[i * N + j], `${M}x${N} at ${i},${j}`);
  }
});
