/**
 * Generation's incremental forward: cached attention against a naive loop, and logits of a sequence
 * run in pieces through the KV cache against the logits of one full forward, on CPU and WebGPU.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadLlama } from '../src/model/llama-dir.ts';
import { KvCache } from '../src/runtime/kv-cache.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import type { Backend } from '../src/tensor/tensor.ts';
import { openDevice, WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import {
  DEFAULT_ATTENTION_KEYS,
  DEFAULT_ATTENTION_WORKGROUPS,
  DEFAULT_GEMV,
} from '../src/tensor/webgpu/context.ts';
import { MODELS, rng } from './helpers.ts';

const cpu = new CpuBackend();
const probe = await openDevice();
probe?.device.destroy();
const gpu = probe ? await WebGpuBackend.create() : undefined;
const backends: [string, Backend | undefined][] = [
  ['cpu', cpu],
  ['webgpu', gpu],
];

/** Straight from the definition: softmax over keys 0..past+i of q.k / sqrt(Dh), times V. */
function naiveCached(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  queries: number,
  past: number,
  H: number,
  Hkv: number,
  Dh: number,
): Float32Array {
  const out = new Float32Array(queries * H * Dh);
  for (let i = 0; i < queries; i++)
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / Hkv));
      const scores: number[] = [];
      for (let j = 0; j <= past + i; j++) {
        let dot = 0;
        for (let d = 0; d < Dh; d++) dot += q[(i * H + h) * Dh + d] * k[(j * Hkv + g) * Dh + d];
        scores.push(dot / Math.sqrt(Dh));
      }
      const max = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - max));
      const sum = e.reduce((a, b) => a + b, 0);
      for (let d = 0; d < Dh; d++) {
        let acc = 0;
        for (let j = 0; j < e.length; j++) acc += e[j] * v[(j * Hkv + g) * Dh + d];
        out[(i * H + h) * Dh + d] = acc / sum;
      }
    }
  return out;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

for (const [name, b] of backends) {
  test(`attentionCached equals the definition (${name})`, { skip: !b && 'no WebGPU adapter' }, async () => {
    const r = rng(7);
    // on WebGPU: one chunk of 64 keys, several splits (merged), splits a query does not reach, heads
    // that do not fit one workgroup, a head size not a multiple of 4, splits of several chunks (64
    // queries) and one split of several (128); chunks of 8 and 256 keys
    for (const [queries, past, H, Hkv, Dh, capacity] of [
      [1, 0, 4, 2, 16, 8],
      [1, 200, 6, 2, 64, 256],
      [5, 37, 4, 1, 32, 50],
      [3, 3, 2, 2, 24, 6],
      [4, 126, 8, 2, 128, 140],
      [1, 100, 16, 1, 128, 128],
      [2, 70, 2, 1, 6, 80],
      [64, 300, 4, 2, 16, 400],
      [128, 100, 4, 2, 16, 300],
    ]) {
      const q = r.normal(queries * H * Dh);
      const k = r.normal(capacity * Hkv * Dh, 2);
      const v = r.normal(capacity * Hkv * Dh);
      const run = () =>
        b!.attentionCached(
          b!.upload(q, [queries, H * Dh], 'f32'),
          b!.upload(k, [capacity, Hkv * Dh], 'f32'),
          b!.upload(v, [capacity, Hkv * Dh], 'f32'),
          { queries, past, numHeads: H, numKvHeads: Hkv, headDim: Dh },
        );
      const want = naiveCached(q, k, v, queries, past, H, Hkv, Dh);
      const got = await b!.read(run());
      assert.ok(maxAbsDiff(got, want) < 2e-5);
      if (b instanceof WebGpuBackend) {
        // key and value rows read a value a load instead of four: the same sums
        b.ctx.gemv = { ...DEFAULT_GEMV, chunks: false };
        const scalar = await b.read(run());
        b.ctx.gemv = DEFAULT_GEMV;
        assert.deepEqual(scalar, got);
        // 256 keys a workgroup: halved where the scores would not fit workgroup memory
        for (const keys of [8, 256]) {
          b.ctx.attentionKeys = keys;
          const other = await b.read(run());
          b.ctx.attentionKeys = DEFAULT_ATTENTION_KEYS;
          assert.ok(
            maxAbsDiff(other, want) < 2e-5,
            `${maxAbsDiff(other, want)} with ${keys} keys a workgroup`,
          );
        }
        // one workgroup per (query, head group): every key in one split, no merge
        b.ctx.attentionWorkgroups = 1;
        const unsplit = await b.read(run());
        b.ctx.attentionWorkgroups = DEFAULT_ATTENTION_WORKGROUPS;
        assert.ok(maxAbsDiff(unsplit, want) < 2e-5, `${maxAbsDiff(unsplit, want)} unsplit`);
      }
    }
  });

  test(`writeRows writes in place and checks bounds (${name})`, {
    skip: !b && 'no WebGPU adapter',
  }, async () => {
    const dst = b!.upload(new Float32Array(12), [4, 3], 'f32');
    b!.writeRows(dst, b!.upload(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3], 'f32'), 1);
    assert.deepEqual([...(await b!.read(dst))], [0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0]);
    assert.throws(
      () => b!.writeRows(dst, b!.upload(new Float32Array(6), [2, 3], 'f32'), 3),
      /writeRows: \[2, 3\] does not fit \[4, 3\] at row 3/,
    );
  });

  test(`logits through the KV cache equal one full forward (${name}, llama-tiny)`, {
    skip: !b && 'no WebGPU adapter',
  }, async () => {
    const model = loadLlama(`${MODELS}llama-tiny`, b!);
    const V = model.config.vocabSize;
    const ids = Int32Array.from({ length: 300 }, (_, i) => (i * 7919 + 13) % V);
    const full = await b!.read(model.forward(ids, { batch: 1, seqLen: ids.length }));
    // a prompt, a second chunk after it (cached attention with several queries), then one token at a
    // time across the first capacity growth (256)
    const cache = new KvCache(model, 512);
    const pieces = [[0, 40], [40, 47], ...Array.from({ length: 253 }, (_, i) => [47 + i, 48 + i])];
    let worst = 0;
    for (const [start, end] of pieces) {
      cache.reserve(end - start);
      const logits = await b!.read(model.forwardCached(ids.subarray(start, end), cache));
      worst = Math.max(worst, maxAbsDiff(logits, full.subarray((end - 1) * V, end * V)));
    }
    assert.equal(cache.past, 300);
    assert.ok(worst < 2e-4, `max |logit difference| ${worst}`);
    // a later request sharing the first 47 tokens re-runs only the rest
    cache.truncate(47);
    cache.reserve(3);
    const again = await b!.read(model.forwardCached(ids.subarray(47, 50), cache));
    assert.ok(maxAbsDiff(again, full.subarray(49 * V, 50 * V)) < 2e-4);
    assert.throws(() => cache.reserve(500), /context full: 550 tokens exceed the context length 512/);
    cache.dispose();
  });
}
