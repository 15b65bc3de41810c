/**
 * FlatQuant: the Kronecker transform against the product written out, the training gradients against
 * central differences of an independent float64 forward, and the method on llama-tiny (loss falls,
 * W4A4 perplexity below RTN's with the same formats, checkpoints reload to the same numbers).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { loadCalibration } from '../src/calib/data.ts';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { useInt8Matmuls } from '../src/model/int8.ts';
import type { LlamaModel } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { loadQuantized, readQuantizationConfig, saveQuantized } from '../src/quant/checkpoint.ts';
import {
  initialState,
  kroneckerSizes,
  kronRows,
  kronRowsBackward,
  lossAndGrads,
  type TransformProblem,
  type TransformState,
} from '../src/quant/flatquant-train.ts';
import '../src/quant/methods.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { openDevice, WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import { MODELS, maxRelErr, rng, SHARED, testManifest, WIKITEXT } from './helpers.ts';

const cpu = new CpuBackend();

/** The (n1 n2) x (n1 n2) matrix L ⊗ R: entry [(i, j), (a, b)] = L[i, a] R[j, b]. */
function kroneckerMatrix(l: ArrayLike<number>, n1: number, r: ArrayLike<number>, n2: number): Float64Array {
  const n = n1 * n2;
  const p = new Float64Array(n * n);
  for (let i = 0; i < n1; i++)
    for (let j = 0; j < n2; j++)
      for (let a = 0; a < n1; a++)
        for (let b = 0; b < n2; b++) p[(i * n2 + j) * n + a * n2 + b] = l[i * n1 + a] * r[j * n2 + b];
  return p;
}

/** x [rows, k] times m [k, cols] in float64. */
function matmul(
  x: ArrayLike<number>,
  rows: number,
  m: ArrayLike<number>,
  k: number,
  cols: number,
): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let t = 0; t < k; t++)
      for (let c = 0; c < cols; c++) out[r * cols + c] += x[r * k + t] * m[t * cols + c];
  return out;
}

function transpose(m: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = m[r * cols + c];
  return t;
}

/** Inverse by Cramer-free Gauss elimination on [m | I], no pivoting (well-conditioned inputs only). */
function inverse(m: Float64Array, n: number): Float64Array {
  const a = Array.from({ length: n }, (_, i) => [
    ...m.subarray(i * n, (i + 1) * n),
    ...Array.from({ length: n }, (_, j) => (i === j ? 1 : 0)),
  ]);
  for (let c = 0; c < n; c++) {
    const pivot = a[c][c];
    a[c] = a[c].map((v) => v / pivot);
    for (let r = 0; r < n; r++) if (r !== c) a[r] = a[r].map((v, j) => v - a[r][c] * a[c][j]);
  }
  return Float64Array.from(a.flatMap((row) => row.slice(n)));
}

test('Backend.kron and kronRows equal x (L ⊗ R) with the Kronecker product written out', async () => {
  const r = rng(1);
  const [rows, n1, n2] = [5, 3, 4];
  const x = r.normal(rows * n1 * n2);
  const l = Float64Array.from(r.normal(n1 * n1));
  const rt = Float64Array.from(r.normal(n2 * n2));
  const want = matmul(x, rows, kroneckerMatrix(l, n1, rt, n2), n1 * n2, n1 * n2);
  const got = cpu.kron(
    cpu.upload(x, [rows, n1 * n2], 'f32'),
    cpu.upload(Float32Array.from(l), [n1, n1], 'f32'),
    cpu.upload(Float32Array.from(rt), [n2, n2], 'f32'),
  );
  assert.ok(maxRelErr(await cpu.read(got), want) < 1e-6);
  const host = await kronRows(cpu, x, rows, l, n1, rt, n2);
  assert.ok(maxRelErr(host.out, want) < 1e-6);
  assert.deepEqual(kroneckerSizes(4096), [64, 64]);
  assert.deepEqual(kroneckerSizes(11008), [86, 128]);
  assert.deepEqual(kroneckerSizes(14336), [112, 128]);
  assert.deepEqual(kroneckerSizes(384), [16, 24]);
});

test('kronRowsBackward gives the gradients of sum(g * kronRows) (central differences)', async () => {
  const r = rng(2);
  const [rows, n1, n2] = [4, 2, 3];
  const n = n1 * n2;
  const x = r.normal(rows * n);
  const g = r.normal(rows * n);
  const a = Float64Array.from(r.normal(n1 * n1));
  const b = Float64Array.from(r.normal(n2 * n2));
  const f = (aa: Float64Array, bb: Float64Array, xx: Float32Array) =>
    matmul(xx, rows, kroneckerMatrix(aa, n1, bb, n2), n, n).reduce((s, v, i) => s + v * g[i], 0);
  const { tSwapped } = await kronRows(cpu, x, rows, a, n1, b, n2);
  const grads = await kronRowsBackward(cpu, x, tSwapped, g, rows, a, n1, b, n2, true);
  const eps = 1e-3;
  const central = (bump: (h: number) => number) => (bump(eps) - bump(-eps)) / (2 * eps);
  const fdA = a.map((_, i) =>
    central((h) =>
      f(
        a.map((v, k) => (k === i ? v + h : v)),
        b,
        x,
      ),
    ),
  );
  const fdB = b.map((_, i) =>
    central((h) =>
      f(
        a,
        b.map((v, k) => (k === i ? v + h : v)),
        x,
      ),
    ),
  );
  const fdX = Float64Array.from(x, (_, i) =>
    central((h) =>
      f(
        a,
        b,
        x.map((v, k) => (k === i ? v + h : v)),
      ),
    ),
  );
  assert.ok(maxRelErr(grads.da, fdA) < 1e-3, 'dA');
  assert.ok(maxRelErr(grads.db, fdB) < 1e-3, 'dB');
  assert.ok(maxRelErr(grads.dx ?? [], fdX) < 1e-3, 'dX');
});

interface Frozen {
  codes: Float64Array;
  inside: Uint8Array;
  offset: Float64Array;
  amax: Float64Array;
}

/**
 * An independent float64 forward of FlatQuant's group loss with the full Kronecker matrix and its
 * inverse. With `frozen` the rounding offsets, clamped codes and row ranges are those of the first
 * call, so that its derivative is exactly the straight-through estimator's.
 */
function naiveLoss(p: TransformProblem, s: TransformState, frozen?: { a: Frozen; w: Frozen }) {
  const { n1, n2, rows, m } = p;
  const n = n1 * n2;
  const d = s.diag ?? new Float64Array(n).fill(1);
  const big = kroneckerMatrix(s.left, n1, s.right, n2);
  const xt = matmul(
    p.x.map((v, e) => v * d[e % n]),
    rows,
    big,
    n,
    n,
  );
  const wt = matmul(
    p.w.map((v, e) => v / d[e % n]),
    m,
    transpose(inverse(big, n), n, n),
    n,
    n,
  );
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  const quant = (
    v: Float64Array,
    count: number,
    bits: number,
    qmin: number,
    clip: (r: number) => number,
    f?: Frozen,
  ) => {
    const qmax = 2 ** (bits - 1) - 1;
    const out = new Float64Array(v.length);
    const rec: Frozen = f ?? {
      codes: new Float64Array(v.length),
      inside: new Uint8Array(v.length),
      offset: new Float64Array(v.length),
      amax: new Float64Array(count),
    };
    for (let r = 0; r < count; r++) {
      if (!f) for (let j = 0; j < n; j++) rec.amax[r] = Math.max(rec.amax[r], Math.abs(v[r * n + j]));
      const scale = (clip(r) * rec.amax[r]) / qmax;
      for (let j = 0; j < n; j++) {
        const e = r * n + j;
        if (!f) {
          const rounded = Math.round(v[e] / scale);
          rec.inside[e] = rounded >= qmin && rounded <= qmax ? 1 : 0;
          rec.codes[e] = Math.min(Math.max(rounded, qmin), qmax);
          rec.offset[e] = rounded - v[e] / scale;
        }
        out[e] = rec.inside[e] ? v[e] + scale * rec.offset[e] : scale * rec.codes[e];
      }
    }
    return { out, rec };
  };
  const qa = quant(xt, rows, p.actBits, -(2 ** (p.actBits - 1)), () => sig(s.actClipLogit), frozen?.a);
  const qw = quant(
    wt,
    m,
    p.weightBits,
    -(2 ** (p.weightBits - 1) - 1),
    (r) => sig(s.weightClipLogits[r]),
    frozen?.w,
  );
  const y = matmul(qa.out, rows, transpose(qw.out, m, n), n, m);
  const yfp = matmul(p.x, rows, transpose(p.w, m, n), n, m);
  const loss = y.reduce((acc, v, i) => acc + (v - yfp[i]) ** 2, 0) / y.length;
  return { loss, frozen: { a: qa.rec, w: qw.rec } };
}

test('lossAndGrads: straight-through gradients of every parameter equal central differences', async () => {
  const r = rng(3);
  const [rows, n1, n2, m] = [12, 2, 3, 5];
  const n = n1 * n2;
  const p: TransformProblem = {
    x: r.normal(rows * n),
    rows,
    w: r.normal(m * n, 0.5),
    m,
    n1,
    n2,
    weightBits: 4,
    actBits: 4,
    diag: Float32Array.from(r.normal(n), (v) => 1 + 0.3 * Math.abs(v)),
  };
  const s = initialState(p, { epochs: 1, lr: 1, batchRows: rows, seed: 5, clipInit: 1.5 });
  s.weightClipLogits = Float64Array.from(r.normal(m), (v) => 1.5 + v);
  const { loss, grads } = await lossAndGrads(cpu, p, s, p.x, rows);
  const base = naiveLoss(p, s);
  assert.ok(Math.abs(base.loss / loss - 1) < 1e-4, `loss ${loss} vs float64 ${base.loss}`);
  const eps = 1e-5;
  const fd = (values: Float64Array) =>
    values.map((v, i) => {
      const at = (h: number) => {
        values[i] = v + h;
        const l = naiveLoss(p, s, base.frozen).loss;
        values[i] = v;
        return l;
      };
      return (at(eps) - at(-eps)) / (2 * eps) / base.loss;
    });
  assert.ok(maxRelErr(grads.left, fd(s.left)) < 2e-3, 'left factor');
  assert.ok(maxRelErr(grads.right, fd(s.right)) < 2e-3, 'right factor');
  assert.ok(maxRelErr(grads.diag ?? [], fd(s.diag ?? new Float64Array())) < 2e-3, 'scaling');
  assert.ok(maxRelErr(grads.weights, fd(s.weightClipLogits)) < 2e-3, 'weight clips');
  const act = new Float64Array([s.actClipLogit]);
  const fdAct = (() => {
    const at = (h: number) => {
      s.actClipLogit = act[0] + h;
      return naiveLoss(p, s, base.frozen).loss;
    };
    const g = (at(eps) - at(-eps)) / (2 * eps) / base.loss;
    s.actClipLogit = act[0];
    return g;
  })();
  assert.ok(Math.abs(grads.act - fdAct) < 2e-3 * Math.abs(fdAct), `activation clip ${grads.act} vs ${fdAct}`);
});

const TINY = `${MODELS}llama-tiny`;
const tokenizer = loadTokenizer(TINY);
const evalIds = tokenizer.encode(readEvalText(WIKITEXT)).subarray(0, 4097);
const ppl = async (m: LlamaModel) => (await perplexity(m, evalIds, { seqLen: 512, maxWindows: 8 })).ppl;

function recipeOf(obj: Record<string, unknown>) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-fq-')), 'recipe.json');
  fs.writeFileSync(file, JSON.stringify(obj));
  return resolveRecipe(file);
}

const probe = await openDevice();
probe?.device.destroy();

test('flatquant-w4a4 on llama-tiny: losses fall, perplexity beats RTN W4A4, checkpoint reloads (CPU, WebGPU)', async () => {
  const calib = await loadCalibration(tokenizer, {
    file: `${SHARED}data/text/brown.txt`,
    samples: 4,
    seqLen: 256,
    seed: 0,
  });
  const formats = { weights: 'int4-row-sym', activations: 'int4-row-sym' };
  const rtn = loadLlama(TINY, cpu);
  await quantizeModel(rtn, recipeOf({ name: 'rtn', ...formats }), undefined);
  const recipe = recipeOf({ name: 'fq', ...formats, steps: [{ flatquant: { epochs: 3, batchSamples: 2 } }] });
  const model = loadLlama(TINY, cpu);
  const report = await quantizeModel(model, recipe, calib);
  for (const layer of report.layers) {
    const groups = layer.flatquant as Record<string, { lossFirstEpoch: number; lossLastEpoch: number }>;
    assert.equal(Object.keys(groups).length, 4);
    for (const [g, v] of Object.entries(groups))
      assert.ok(v.lossLastEpoch < v.lossFirstEpoch, `layer ${layer.layer} ${g}: ${JSON.stringify(v)}`);
  }
  const [pRtn, pFq] = [await ppl(rtn), await ppl(model)];
  assert.ok(pFq < pRtn * 0.98, `flatquant ${pFq} vs rtn ${pRtn}`);
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-fq-ck-')), 'q');
  await saveQuantized(model, recipe, testManifest(TINY), dir, false);
  const stored = readQuantizationConfig(dir);
  assert.ok(stored);
  const reloaded = loadQuantized(dir, cpu, stored);
  // q/k/v and gate/up share one transform again, so their input is transformed once
  for (const { linears: l } of reloaded.layers) {
    assert.equal(l.k_proj.inputQuant?.transform, l.q_proj.inputQuant?.transform);
    assert.equal(l.v_proj.inputQuant?.transform, l.q_proj.inputQuant?.transform);
    assert.equal(l.up_proj.inputQuant?.transform, l.gate_proj.inputQuant?.transform);
    assert.notEqual(l.o_proj.inputQuant?.transform, l.q_proj.inputQuant?.transform);
  }
  assert.equal(await ppl(reloaded), pFq);
  // the integer GEMM path: the transform, then 4-bit codes of x and W in int8
  assert.equal(useInt8Matmuls(reloaded), 7 * reloaded.layers.length);
  const integer = await ppl(reloaded);
  assert.ok(Math.abs(integer / pFq - 1) < 1e-2, `int GEMM ${integer} vs fake-quant ${pFq}`);
  if (probe) {
    const gpu = await WebGpuBackend.create();
    const onGpu = await ppl(loadQuantized(dir, gpu, stored));
    // 4-bit activation codes flip where the two devices' sums differ in the last bits (each flip is a
    // whole 1/15 of the row range): RTN W4A4 without a transform differs by 0.44% here (460.80 / 462.85)
    assert.ok(Math.abs(onGpu / pFq - 1) < 1e-2, `WebGPU ${onGpu} vs CPU ${pFq}`);
  }
});

test('flatquant recipes refuse formats it cannot train', () => {
  const a4 = { name: 'x', weights: 'int4-row-sym', activations: 'int4-row-sym' };
  for (const [weights, activations, what] of [
    ['int4-g128', 'int4-row-sym', /symmetric per-channel INT weights/],
    ['int4-row', 'int4-row-sym', /symmetric per-channel INT weights/],
    ['int4-row-sym', 'mxint8-128', /dynamic symmetric per-token INT activations/],
  ] as const)
    assert.throws(() => recipeOf({ name: 'x', weights, activations, steps: ['flatquant'] }), what);
  assert.throws(
    () => recipeOf({ name: 'x', weights: 'int4-row-sym', steps: ['flatquant'] }),
    /dynamic symmetric per-token INT activations/,
  );
  assert.throws(
    () => recipeOf({ ...a4, steps: [{ flatquant: { epochs: 0 } }] }),
    /epochs must be an integer >= 1/,
  );
  assert.equal(resolveRecipe('flatquant-w4a4').calib.seqLen, 2048);
});
