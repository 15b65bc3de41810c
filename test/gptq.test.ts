import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { UserError } from '../src/errors.ts';
import { encodeGgmlBlocks, ggmlBlockBytes, quantizeGgmlBlocks } from '../src/formats/ggml-codes.ts';
import {
  decode,
  type FormatSpec,
  fakeQuantInt,
  fakeQuantMx,
  fakeQuantRows,
  type GgmlSpec,
  type IntSpec,
  intParams,
  intQuantizeValue,
  type MxSpec,
  mxElementInfo,
  mxQuantizeValue,
  mxSharedExponent,
  parseFormat,
} from '../src/formats/index.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { dequantizeGptq, factorHessian, type GptqOptions, gptq } from '../src/quant/gptq.ts';
import { reconstructionLoss } from '../src/quant/gptq-layer.ts';
import { choleskyInverseUpper, HessianAccumulator } from '../src/quant/hessian.ts';
import '../src/quant/methods.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { f16BitsToNumber, numberToF16Bits } from '../src/tensor/dtype.ts';
import { assertSameWeights, MODELS, randomCalibration, rng, wholeLayerGptq } from './helpers.ts';

const cpu = new CpuBackend();
const SMALL = `${MODELS}llama-small`;

const ROWS = 64;
const COLS = 128;
const TOKENS = 256;

// ---------------------------------------------------------------------------------------------
// Independent float64 reference: textbook linear algebra and the plain GPTQ column loop.
// ---------------------------------------------------------------------------------------------

function naiveCholesky(a: Float64Array, n: number): Float64Array {
  const l = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = a[i * n + j];
      for (let k = 0; k < j; k++) s -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = i === j ? Math.sqrt(s) : s / l[j * n + j];
    }
  }
  return l;
}

/** A^-1 from A = L L^T: solve L y = e_c, then L^T x = y, column by column. */
function naiveInverse(a: Float64Array, n: number): Float64Array {
  const l = naiveCholesky(a, n);
  const inv = new Float64Array(n * n);
  const y = new Float64Array(n);
  for (let c = 0; c < n; c++) {
    for (let i = 0; i < n; i++) {
      let s = i === c ? 1 : 0;
      for (let k = 0; k < i; k++) s -= l[i * n + k] * y[k];
      y[i] = s / l[i * n + i];
    }
    for (let i = n - 1; i >= 0; i--) {
      let s = y[i];
      for (let k = i + 1; k < n; k++) s -= l[k * n + i] * inv[k * n + c];
      inv[i * n + c] = s / l[i * n + i];
    }
  }
  return inv;
}

/** Reference Hinv: cholesky(H), cholesky_inverse, cholesky(upper=True) = transpose of the lower factor. */
function naiveHinvUpper(h: Float64Array, n: number): Float64Array {
  const l = naiveCholesky(naiveInverse(h, n), n);
  const u = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) u[i * n + j] = l[j * n + i];
  return u;
}

interface RefOptions {
  damp: number;
  actOrder: boolean;
  staticGroups: boolean;
  includeZero: boolean;
  /** GPTQ quantizer mse=True: range shrunk by 1 - i/100 (i < 80), least sum |q - x|^2.4 */
  mse?: boolean;
  /** emulate the reference tools: groups fitted on W as of the start of their lazy block of this size */
  staleBlock?: number;
}

/** Textbook GPTQ: every column's error goes to all later columns immediately, no lazy blocks. */
function textbookGptq(
  w0: Float32Array,
  rows: number,
  cols: number,
  H0: Float64Array,
  spec: FormatSpec,
  o: RefOptions,
) {
  const W = Float64Array.from(w0);
  const H = Float64Array.from(H0);
  for (let d = 0; d < cols; d++) {
    if (H[d * cols + d] !== 0) continue;
    H[d * cols + d] = 1;
    for (let r = 0; r < rows; r++) W[r * cols + d] = 0;
  }
  const order = Array.from({ length: cols }, (_, i) => i);
  if (o.actOrder) order.sort((a, b) => H[b * cols + b] - H[a * cols + a] || a - b);
  const hp = new Float64Array(cols * cols);
  let mean = 0;
  for (let i = 0; i < cols; i++) mean += H[i * cols + i] / cols;
  for (let a = 0; a < cols; a++)
    for (let b = 0; b < cols; b++)
      hp[a * cols + b] = H[order[a] * cols + order[b]] + (a === b ? o.damp * mean : 0);
  const U = naiveHinvUpper(hp, cols);
  const wp = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let p = 0; p < cols; p++) wp[r * cols + p] = W[r * cols + order[p]];

  // quantizer: a function of (row, position) given by parameters fitted here
  const isInt = spec.kind === 'int';
  const ispec = spec as IntSpec;
  const mspec = spec as MxSpec;
  const gspec = spec as GgmlSpec;
  const size = isInt
    ? ispec.granularity === 'group'
      ? ispec.group!
      : cols
    : spec.kind === 'ggml'
      ? 32
      : mspec.block;
  const dynamic = !o.staticGroups && (!isInt || ispec.granularity === 'group');
  // llama.cpp: q4_0 d = (value of largest magnitude, first on ties) / -8, q8_0 d = amax / 127 (f32);
  // codes from 1/d by its rounding, clamped; values use d rounded to fp16
  const ggmlFit = (vals: ArrayLike<number>) => {
    let m = 0;
    for (let i = 0; i < vals.length; i++) if (Math.abs(vals[i]) > Math.abs(m)) m = vals[i];
    const d = Math.fround(gspec.type === 'q4_0' ? m / -8 : Math.abs(m) / 127);
    return { d, d16: f16BitsToNumber(numberToF16Bits(d)) };
  };
  const ggmlQuant = (v: number, p: { d: number; d16: number }) => {
    const id = p.d === 0 ? 0 : Math.fround(1 / p.d);
    const t = Math.fround(Math.fround(v) * id);
    if (gspec.type === 'q4_0')
      return (Math.min(15, Math.max(0, Math.trunc(Math.fround(t + 8.5)))) - 8) * p.d16;
    const r = Math.sign(t) * Math.floor(Math.abs(t) + 0.5);
    return Math.min(127, Math.max(-128, r)) * p.d16;
  };
  const iopts = { includeZero: o.includeZero, clip: isInt ? ispec.clip : undefined };
  const info = spec.kind === 'mx' ? mxElementInfo(mspec.element) : null;
  const mseFit = (vals: ArrayLike<number>) => {
    let best = intParams(vals, ispec.bits, ispec.symmetric, iopts);
    let bestErr = Infinity;
    for (let i = 0; i < 80; i++) {
      const p = intParams(vals, ispec.bits, ispec.symmetric, { ...iopts, clip: 1 - i / 100 });
      let err = 0;
      for (let k = 0; k < vals.length; k++) {
        const lo = ispec.symmetric ? -(2 ** (ispec.bits - 1)) : 0;
        const hi = ispec.symmetric ? 2 ** (ispec.bits - 1) - 1 : 2 ** ispec.bits - 1;
        const q = Math.min(hi, Math.max(lo, Math.round(Math.fround(vals[k] / p.scale)) + p.zero));
        err += Math.abs(Math.fround((q - p.zero) * p.scale) - vals[k]) ** 2.4;
      }
      if (err < bestErr) [best, bestErr] = [p, err];
    }
    return best;
  };
  const fit = (vals: ArrayLike<number>) => {
    if (spec.kind === 'ggml') return ggmlFit(vals);
    if (isInt && o.mse) return mseFit(vals);
    if (isInt) return intParams(vals, ispec.bits, ispec.symmetric, iopts);
    let amax = 0;
    for (let i = 0; i < vals.length; i++) amax = Math.max(amax, Math.abs(vals[i]));
    return { e: mxSharedExponent(amax, info!.emax) };
  };
  type P = ReturnType<typeof fit>;
  const quant = (v: number, p: P) =>
    'd16' in p
      ? ggmlQuant(v, p)
      : 'e' in p
        ? mxQuantizeValue(v, p.e, info!, mspec.rounding)
        : intQuantizeValue(v, p.scale, p.zero, ispec.bits, ispec.symmetric);
  const tensorParams = isInt && ispec.granularity === 'tensor' ? fit(W) : null;
  const staticParams = (r: number, c: number) =>
    tensorParams ??
    fit(W.subarray(r * cols + Math.floor(c / size) * size, r * cols + Math.floor(c / size) * size + size));

  const out = new Float32Array(rows * cols);
  const current: P[] = new Array(rows);
  let snapshot = wp.slice();
  for (let i = 0; i < cols; i++) {
    if (o.staleBlock && i % o.staleBlock === 0) snapshot = wp.slice();
    for (let r = 0; r < rows; r++) {
      const row = r * cols;
      if (dynamic && i % size === 0) {
        const src = o.staleBlock ? snapshot : wp;
        current[r] = fit(src.subarray(row + i, row + i + size));
      }
      const params = dynamic ? current[r] : staticParams(r, order[i]);
      const w = wp[row + i];
      const q = quant(w, params);
      out[row + order[i]] = q;
      const e = (w - q) / U[i * cols + i];
      for (let j = i + 1; j < cols; j++) wp[row + j] -= e * U[i * cols + j];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Data: a 64 x 128 layer, 256 calibration tokens with correlated channels and a few outliers.
// ---------------------------------------------------------------------------------------------

function makeLayer(seed: number, dead: number[] = []) {
  const r = rng(seed);
  const weight = r.normal(ROWS * COLS, 0.05);
  for (let i = 0; i < weight.length; i += 7) weight[i] += 0.03; // some asymmetry
  const z = r.normal(TOKENS * COLS);
  const mix = r.normal(COLS * COLS, 0.15);
  const x = new Float32Array(TOKENS * COLS);
  for (let t = 0; t < TOKENS; t++) {
    for (let j = 0; j < COLS; j++) {
      let s = z[t * COLS + j];
      for (let k = 0; k < COLS; k += 8) s += z[t * COLS + k] * mix[k * COLS + j];
      x[t * COLS + j] = s;
    }
  }
  for (const ch of [3, 50, 77, 100]) for (let t = 0; t < TOKENS; t++) x[t * COLS + ch] *= 8;
  for (const ch of dead) for (let t = 0; t < TOKENS; t++) x[t * COLS + ch] = 0;
  const acc = new HessianAccumulator(COLS);
  acc.add(x, TOKENS);
  return { weight, x, H: acc.finish() };
}

const layer = makeLayer(1);

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** sum over tokens of ||(W - Q) x||^2 */
function outputError(w: ArrayLike<number>, q: ArrayLike<number>, x: Float32Array, tokens: number): number {
  let total = 0;
  for (let t = 0; t < tokens; t++) {
    for (let r = 0; r < ROWS; r++) {
      let s = 0;
      for (let c = 0; c < COLS; c++) s += (w[r * COLS + c] - q[r * COLS + c]) * x[t * COLS + c];
      total += s * s;
    }
  }
  return total;
}

/** bit-identical arrays; reports the first mismatch (assert.deepEqual's diff of 8192 values is very slow) */
function assertSame(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  assert.equal(a.length, b.length, `${what}: lengths`);
  for (let i = 0; i < a.length; i++)
    if (!Object.is(a[i], b[i])) assert.fail(`${what}: index ${i}: ${a[i]} !== ${b[i]}`);
}

function throwsUser(fn: () => unknown, fragment: string): void {
  assert.throws(fn, (e: unknown) => e instanceof UserError && e.message.includes(fragment));
}

const BASE: RefOptions = { damp: 0.01, actOrder: false, staticGroups: false, includeZero: true };

// ---------------------------------------------------------------------------------------------

describe('HessianAccumulator', () => {
  test('H = 2/N sum x x^T over batches, equal to the naive sum', () => {
    const { x } = layer;
    const acc = new HessianAccumulator(COLS);
    acc.add(x.subarray(0, 100 * COLS), 100);
    acc.add(x.subarray(100 * COLS), TOKENS - 100);
    assert.equal(acc.count, TOKENS);
    const h = acc.finish();
    let worst = 0;
    for (let i = 0; i < COLS; i++) {
      for (let j = 0; j < COLS; j++) {
        let s = 0;
        for (let t = 0; t < TOKENS; t++) s += x[t * COLS + i] * x[t * COLS + j];
        const want = (2 * s) / TOKENS;
        worst = Math.max(worst, Math.abs(h[i * COLS + j] - want) / (1 + Math.abs(want)));
      }
    }
    assert.ok(worst < 1e-12, `relative error ${worst}`);
  });

  test('addGram accumulates X^T X computed elsewhere', () => {
    const x = Float32Array.from([1, 2, 3, -1, 0.5, 4]); // 2 tokens x 3 channels
    const gram = new Float64Array(9);
    for (let i = 0; i < 3; i++)
      for (let j = 0; j < 3; j++) gram[i * 3 + j] = x[i] * x[j] + x[3 + i] * x[3 + j];
    const a = new HessianAccumulator(3);
    a.addGram(gram, 2);
    const b = new HessianAccumulator(3);
    b.add(x, 2);
    assert.deepEqual(Array.from(a.finish()), Array.from(b.finish()));
    // hand-computed: H[0, 2] = 2/2 * (1*3 + -1*4) = -1, H[1, 1] = 4 + 0.25
    assert.equal(a.finish()[2], -1);
    assert.equal(a.finish()[4], 4.25);
  });

  test('refuses NaN inputs and an empty finish', () => {
    const acc = new HessianAccumulator(2);
    throwsUser(() => acc.add(Float32Array.from([1, Number.NaN]), 1), 'channel 1');
    throwsUser(() => new HessianAccumulator(2).finish(), 'no calibration inputs');
  });
});

test('choleskyInverseUpper: U upper with U^T U = H^-1, equal to the three-step reference', () => {
  const n = 150; // not a multiple of the 64-wide blocks
  const r = rng(7);
  const a = r.normal(n * n);
  const h = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = i === j ? 0.5 : 0;
      for (let k = 0; k < n; k++) s += a[i * n + k] * a[j * n + k];
      h[i * n + j] = s / n;
    }
  const u = choleskyInverseUpper(h.slice(), n);
  for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) assert.equal(u[i * n + j], 0);
  const ref = naiveHinvUpper(h, n);
  assert.ok(maxAbsDiff(u, ref) < 1e-9, `vs reference ${maxAbsDiff(u, ref)}`);
  // (U^T U) H = I
  let worst = 0;
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < n; k++) {
        let inv = 0; // (U^T U)[i, k]
        for (let m = 0; m <= Math.min(i, k); m++) inv += u[m * n + i] * u[m * n + k];
        s += inv * h[k * n + j];
      }
      worst = Math.max(worst, Math.abs(s - (i === j ? 1 : 0)));
    }
  assert.ok(worst < 1e-9, `identity error ${worst}`);
  throwsUser(() => choleskyInverseUpper(Float64Array.from([1, 2, 2, 1]), 2), 'not positive definite');
});

describe('gptq equals the textbook float64 column loop', () => {
  const cases: [string, string, Partial<GptqOptions>][] = [
    ['int4 per row, asymmetric', 'int4-row', {}],
    ['int4 per row, symmetric', 'int4-row-sym', {}],
    ['int4 g32, asymmetric', 'int4-g32', {}],
    ['int3 g32, symmetric', 'int3-g32-sym', {}],
    ['int4 g32 without includeZero', 'int4-g32', { includeZero: false }],
    ['int4 g32, act_order', 'int4-g32', { actOrder: true }],
    ['int4 g32 sym, act_order + static groups', 'int4-g32-sym', { actOrder: true, staticGroups: true }],
    ['int4 g32, static groups', 'int4-g32', { staticGroups: true }],
    ['int3 g32, mse scale search', 'int3-g32', { mse: true }],
    ['int4 g32 sym, act_order + mse', 'int4-g32-sym', { actOrder: true, mse: true }],
    ['int3 per row, mse', 'int3-row', { mse: true }],
    ['int3 per row, act_order', 'int3-row', { actOrder: true }],
    ['int4 per tensor', 'int4-tensor', {}],
    ['int4 g32, blockSize 48 (aligned to groups)', 'int4-g32', { blockSize: 48 }],
    ['int4 g64, blockSize 16 (block grows to the group)', 'int4-g64', { blockSize: 16 }],
    ['int4 row, blockSize 40 (ragged last block)', 'int4-row', { blockSize: 40, damp: 0.1 }],
    ['mxint4 block 32', 'mxint4', {}],
    ['mxint4 block 32, blockSize 96', 'mxint4-even', { blockSize: 96 }],
    ['mxfp4 block 32', 'mxfp4', {}],
    ['mxint4 block 32, act_order + static exponents', 'mxint4', { actOrder: true, staticGroups: true }],
    ['llama.cpp q4_0', 'q4_0', {}],
    ['llama.cpp q8_0', 'q8_0', {}],
    ['llama.cpp q4_0, act_order + static scales', 'q4_0', { actOrder: true, staticGroups: true }],
  ];
  for (const [name, format, options] of cases) {
    test(name, () => {
      const spec = parseFormat(format);
      const { weight, H } = layer;
      const ref = textbookGptq(weight, ROWS, COLS, H, spec, { ...BASE, ...options });
      // the layer has 128 columns: blocks of 32 make the lazy updates between blocks run too
      for (const blockSize of options.blockSize ? [options.blockSize] : [128, 32]) {
        const res = gptq(weight, ROWS, COLS, H, spec, { ...options, blockSize });
        const diff = maxAbsDiff(res.dequant, ref);
        assert.ok(diff < 1e-6, `blockSize ${blockSize}: max |gptq - textbook| = ${diff}`);
        assert.ok(maxAbsDiff(res.dequant, weight) > 1e-3, 'weights were quantized');
        assertSame(dequantizeGptq(res.encoded, res.gIdx), res.dequant, 'dequantizeGptq(encoded)');
        if (!res.gIdx) assertSame(decode(res.encoded), res.dequant, 'decode(encoded)');
      }
    });
  }

  test('mse moves the scales: fewer clipped ranges than min/max, lower reconstruction error', () => {
    const spec = parseFormat('int3-g32');
    const plain = gptq(layer.weight, ROWS, COLS, layer.H, spec);
    const mse = gptq(layer.weight, ROWS, COLS, layer.H, spec, { mse: true });
    let smaller = 0;
    for (let i = 0; i < plain.encoded.scales.length; i++)
      if (mse.encoded.scales[i] < plain.encoded.scales[i] * 0.995) smaller++;
    assert.ok(smaller > plain.encoded.scales.length / 4, `${smaller} scales shrunk`);
    const e0 = outputError(layer.weight, plain.dequant, layer.x, TOKENS);
    const e1 = outputError(layer.weight, mse.dequant, layer.x, TOKENS);
    assert.ok(e1 < e0, `mse ${e1} vs min/max ${e0}`);
  });

  test('act_order with dynamic groups records gIdx by processing position', () => {
    const res = gptq(layer.weight, ROWS, COLS, layer.H, parseFormat('int4-g32'), { actOrder: true });
    assert.ok(res.gIdx && res.perm, 'gIdx and perm are returned');
    const diag = Array.from({ length: COLS }, (_, c) => layer.H[c * COLS + c]);
    for (let p = 1; p < COLS; p++) assert.ok(diag[res.perm[p - 1]] >= diag[res.perm[p]], `order at ${p}`);
    for (let p = 0; p < COLS; p++) assert.equal(res.gIdx[res.perm[p]], Math.floor(p / 32));
    assert.equal(res.encoded.scales.length, ROWS * 4);
    // the outlier channels (largest diag) come first, so they are in group 0
    for (const ch of [3, 50, 77, 100]) assert.equal(res.gIdx[ch], 0);
  });

  test('staleGroupParams reproduces the reference tools (groups fitted at lazy-block start)', () => {
    const spec = parseFormat('int4-g32');
    const { weight, H } = layer;
    const stale = gptq(weight, ROWS, COLS, H, spec, { staleGroupParams: true });
    const ref = textbookGptq(weight, ROWS, COLS, H, spec, { ...BASE, staleBlock: 128 });
    assert.ok(maxAbsDiff(stale.dequant, ref) < 1e-6, `stale: ${maxAbsDiff(stale.dequant, ref)}`);
    const stale64 = gptq(weight, ROWS, COLS, H, spec, { staleGroupParams: true, blockSize: 64 });
    const ref64 = textbookGptq(weight, ROWS, COLS, H, spec, { ...BASE, staleBlock: 64 });
    assert.ok(maxAbsDiff(stale64.dequant, ref64) < 1e-6, `stale64: ${maxAbsDiff(stale64.dequant, ref64)}`);
    const exact = gptq(weight, ROWS, COLS, H, spec);
    assert.ok(maxAbsDiff(stale.dequant, exact.dequant) > 1e-3, 'the quirk changes g32 results');
    // groups that start at block starts are fitted on the same weights
    const g128 = parseFormat('int4-g128');
    const a = gptq(weight, ROWS, COLS, H, g128, { staleGroupParams: true });
    const b = gptq(weight, ROWS, COLS, H, g128);
    assertSame(a.dequant, b.dequant, 'g128 stale vs exact');
  });

  test('loss = tr((W - Q)(H + damp I)(W - Q)^T) / 2', () => {
    const { weight, H } = layer;
    const res = gptq(weight, ROWS, COLS, H, parseFormat('int4-g32'), { actOrder: true });
    let mean = 0;
    for (let i = 0; i < COLS; i++) mean += H[i * COLS + i] / COLS;
    let want = 0;
    for (let r = 0; r < ROWS; r++)
      for (let i = 0; i < COLS; i++)
        for (let j = 0; j < COLS; j++) {
          const hij = H[i * COLS + j] + (i === j ? 0.01 * mean : 0);
          want +=
            (weight[r * COLS + i] - res.dequant[r * COLS + i]) *
            hij *
            (weight[r * COLS + j] - res.dequant[r * COLS + j]);
        }
    want /= 2;
    assert.ok(Math.abs(res.loss - want) / want < 1e-6, `loss ${res.loss} vs ${want}`);
  });
});

describe('gptq beats round-to-nearest on the calibration batch', () => {
  const { weight, x, H } = layer;
  const cases: [string, (w: Float32Array) => Float32Array][] = [
    [
      'int4-g32',
      (w) => fakeQuantInt(w, ROWS, COLS, parseFormat('int4-g32') as IntSpec, { includeZero: true }),
    ],
    [
      'int3-row',
      (w) => fakeQuantInt(w, ROWS, COLS, parseFormat('int3-row') as IntSpec, { includeZero: true }),
    ],
    ['int4-g32-sym', (w) => fakeQuantInt(w, ROWS, COLS, parseFormat('int4-g32-sym') as IntSpec)],
    ['mxint4', (w) => fakeQuantMx(w, ROWS, COLS, parseFormat('mxint4') as MxSpec)],
    ['mxfp4', (w) => fakeQuantMx(w, ROWS, COLS, parseFormat('mxfp4') as MxSpec)],
    ['q4_0', (w) => fakeQuantRows(w, ROWS, COLS, parseFormat('q4_0'))],
  ];
  for (const [format, rtn] of cases) {
    test(format, () => {
      const spec = parseFormat(format);
      const e0 = outputError(weight, rtn(weight), x, TOKENS);
      const e1 = outputError(weight, gptq(weight, ROWS, COLS, H, spec).dequant, x, TOKENS);
      const e2 = outputError(
        weight,
        gptq(weight, ROWS, COLS, H, spec, { actOrder: true, staticGroups: true }).dequant,
        x,
        TOKENS,
      );
      assert.ok(e1 < 0.8 * e0, `gptq ${e1} vs rtn ${e0}`);
      assert.ok(e2 < 0.8 * e0, `gptq act_order ${e2} vs rtn ${e0}`);
    });
  }
});

test('reconstructionLoss is tr((W - Q) H (W - Q)^T) / 2 as a naive triple loop gives it', () => {
  const r = rng(41);
  const rows = 70; // more than one block of rows, not a multiple of 4
  const cols = 37;
  const w = r.normal(rows * cols);
  const q = w.map((v, i) => (i % 5 === 0 ? v : Math.round(v * 4) / 4));
  const x = r.normal(200 * cols);
  const acc = new HessianAccumulator(cols);
  acc.add(x, 200);
  const H = acc.finish();
  let want = 0;
  for (let row = 0; row < rows; row++)
    for (let i = 0; i < cols; i++)
      for (let j = 0; j < cols; j++) {
        const di = w[row * cols + i] - q[row * cols + i];
        const dj = w[row * cols + j] - q[row * cols + j];
        want += di * H[i * cols + j] * dj;
      }
  const got = reconstructionLoss(w, q, rows, cols, H);
  assert.ok(want > 0);
  assert.ok(Math.abs(got - want / 2) <= 1e-12 * want, `${got} vs ${want / 2}`);
});

describe('dead inputs', () => {
  const dead = [5, 17, 64];
  const { weight, H } = makeLayer(2, dead);
  for (const [format, options] of [
    ['int4-g32', {}],
    ['int4-row', { actOrder: true }],
    ['mxint4', {}],
  ] as [string, Partial<GptqOptions>][]) {
    test(`${format} ${JSON.stringify(options)}: weights zeroed, rest equals the textbook loop`, () => {
      const spec = parseFormat(format);
      const res = gptq(weight, ROWS, COLS, H, spec, options);
      assert.equal(res.deadColumns, 3);
      for (const d of dead) for (let r = 0; r < ROWS; r++) assert.equal(res.dequant[r * COLS + d], 0);
      const ref = textbookGptq(weight, ROWS, COLS, H, spec, { ...BASE, ...options });
      assert.ok(maxAbsDiff(res.dequant, ref) < 1e-6, `dead: ${maxAbsDiff(res.dequant, ref)}`);
    });
  }
});

test('one Hessian factor serves several weights (q/k/v share H): same results as factoring each time', () => {
  const dead = [9, 90];
  const { weight, H } = makeLayer(3, dead);
  const other = rng(4).normal(ROWS * COLS, 0.05);
  for (const options of [{}, { actOrder: true }] as Partial<GptqOptions>[]) {
    const factor = factorHessian(H, COLS, options);
    assert.equal(factor.deadColumns, 2);
    for (const w of [weight, other]) {
      const shared = gptq(w, ROWS, COLS, H, parseFormat('int4-g32'), options, factor);
      const alone = gptq(w, ROWS, COLS, H, parseFormat('int4-g32'), options);
      assert.deepEqual(shared.dequant, alone.dequant);
      assert.deepEqual(shared.encoded.codes, alone.encoded.codes);
      assert.equal(shared.loss, alone.loss);
    }
  }
  assert.throws(
    () => gptq(weight, ROWS, COLS, H, parseFormat('int4-g32'), { damp: 0.1 }, factorHessian(H, COLS)),
    /other options/,
  );
});

test("GPTQ to llama.cpp's block types: stored blocks decode to its values; a diagonal H gives llama.cpp's own K-quant blocks (IQ4: headers); correlated inputs: below RTN's loss", () => {
  const [rows, cols, tokens] = [16, 512, 1024];
  const r = rng(77);
  const weight = r.normal(rows * cols, 0.05);
  const diagonal = new Float64Array(cols * cols);
  for (let c = 0; c < cols; c++) diagonal[c * cols + c] = 0.5 + r.uniform();
  // correlated inputs with a few large channels, as in makeLayer
  const z = r.normal(tokens * cols);
  const x = new Float32Array(tokens * cols);
  for (let t = 0; t < tokens; t++)
    for (let j = 0; j < cols; j++) {
      let v = z[t * cols + j];
      for (let k = j % 16; k < cols; k += 64) v += 0.3 * z[t * cols + k];
      x[t * cols + j] = j % 97 === 0 ? 8 * v : v;
    }
  const acc = new HessianAccumulator(cols);
  acc.add(x, tokens);
  const H = acc.finish();
  const types = ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k', 'q4_1', 'q5_0', 'q5_1', 'iq4_nl', 'iq4_xs'] as const;
  for (const type of types) {
    const spec = parseFormat(type);
    // no correlations: no error reaches another column, so every block is fitted on the original weights
    const plain = gptq(weight, rows, cols, diagonal, spec);
    assert.deepEqual(decode(plain.encoded), plain.dequant, `${type}: decode(encoded)`);
    if (type.endsWith('_k'))
      assert.deepEqual(
        ggmlBlockBytes(plain.encoded.codes, plain.encoded.scaleCodes!, type),
        quantizeGgmlBlocks(weight, cols, type),
        `${type}: llama.cpp's blocks`,
      );
    // IQ4: llama.cpp picks the codes with the scale before its fp16 rounding, GPTQ on the stored grid
    if (type.startsWith('iq4'))
      assert.deepEqual(plain.encoded.scaleCodes, encodeGgmlBlocks(weight, cols, type).headers);
    const res = gptq(weight, rows, cols, H, spec);
    assert.deepEqual(decode(res.encoded), res.dequant, `${type}: decode(encoded), correlated`);
    const rtn = fakeQuantRows(weight, rows, cols, spec);
    const [lossGptq, lossRtn] = [res.dequant, rtn].map((q) => reconstructionLoss(weight, q, rows, cols, H));
    assert.ok(lossGptq < 0.9 * lossRtn, `${type}: GPTQ loss ${lossGptq} vs RTN ${lossRtn}`);
  }
  // importance: each header by llama.cpp's importance path, the weights diag(H) / 2; on rows of one
  // super-block and a diagonal H those are exactly llama.cpp's imatrix blocks
  const one = weight.subarray(0, rows * 256);
  const diag256 = new Float64Array(256 * 256);
  const importance = new Float32Array(256);
  for (let c = 0; c < 256; c++) {
    diag256[c * 256 + c] = 2 * (0.01 + (c % 7 === 0 ? 40 : r.uniform()));
    importance[c] = diag256[c * 256 + c] / 2;
  }
  for (const type of ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k'] as const) {
    const res = gptq(one, rows, 256, diag256, parseFormat(type), { importance: true });
    const blocks = ggmlBlockBytes(res.encoded.codes, res.encoded.scaleCodes!, type);
    assert.deepEqual(blocks, quantizeGgmlBlocks(one, 256, type, importance), `${type}: imatrix blocks`);
    assert.notDeepEqual(blocks, quantizeGgmlBlocks(one, 256, type), `${type}: the importance changes them`);
  }
  const xs = gptq(one, rows, 256, diag256, parseFormat('iq4_xs'), { importance: true }).encoded.scaleCodes;
  assert.deepEqual(xs, encodeGgmlBlocks(one, 256, 'iq4_xs', importance).headers, 'iq4_xs: imatrix headers');
  assert.notDeepEqual(
    xs,
    encodeGgmlBlocks(one, 256, 'iq4_xs').headers,
    'iq4_xs: the importance changes them',
  );
  const q4 = gptq(weight, rows, cols, H, parseFormat('q4_0'), { importance: true });
  assert.deepEqual(decode(q4.encoded), q4.dequant, 'q4_0 importance: decode(encoded)');
  const rtnQ4 = fakeQuantRows(weight, rows, cols, parseFormat('q4_0'));
  assert.ok(
    reconstructionLoss(weight, q4.dequant, rows, cols, H) < reconstructionLoss(weight, rtnQ4, rows, cols, H),
  );
  throwsUser(
    () => gptq(weight, rows, cols, H, parseFormat('int4-g128'), { importance: true }),
    'block scales, not int4-g128',
  );
  const narrow = [weight.subarray(0, rows * 384), rows, 384, new Float64Array(384 * 384)] as const;
  throwsUser(() => gptq(...narrow, parseFormat('q4_k')), 'blocks of 256 do not divide');
});

describe('gptq input errors', () => {
  const { weight, H } = layer;
  test('formats and option combinations it cannot do', () => {
    throwsUser(
      () => gptq(weight, ROWS, COLS, H, parseFormat('mxint4'), { actOrder: true }),
      'needs staticGroups',
    );
    throwsUser(
      () => gptq(weight, ROWS, COLS, H, parseFormat('q4_0'), { actOrder: true }),
      'q4_0: actOrder needs staticGroups',
    );
    throwsUser(() => gptq(weight, ROWS, COLS, H, parseFormat('fp8-e4m3')), 'not fp8-e4m3');
    throwsUser(() => gptq(weight, ROWS, COLS, H, parseFormat('int4-g48')), 'does not divide');
    throwsUser(() => gptq(weight, ROWS, COLS, H, parseFormat('int4-g32'), { blockSize: 0 }), 'blockSize');
    throwsUser(() => gptq(weight, ROWS, COLS, H, parseFormat('int4-g32'), { damp: -1 }), 'damp');
  });
  test('bad shapes and values', () => {
    throwsUser(() => gptq(weight, ROWS, COLS, H.subarray(1), parseFormat('int4-g32')), 'Hessian must be');
    const bad = weight.slice();
    bad[3 * COLS + 9] = Number.NaN;
    throwsUser(() => gptq(bad, ROWS, COLS, H, parseFormat('int4-g32')), 'row 3, column 9');
    const indefinite = Float64Array.from([1, 2, 2, 1]);
    throwsUser(
      () => gptq(Float32Array.from([1, 2]), 1, 2, indefinite, parseFormat('int4-row'), { damp: 0 }),
      'not positive definite at input channel',
    );
  });
});

test('GPTQ in the pipeline: staged group inputs give the weights of whole-layer hook passes', async () => {
  const calib = randomCalibration(7, 3, 64);
  const staged = loadLlama(SMALL, cpu);
  await quantizeModel(staged, resolveRecipe('gptq-w3g128-actorder'), calib);
  const whole = loadLlama(SMALL, cpu);
  await wholeLayerGptq(whole, resolveRecipe('gptq-w3g128-actorder'), calib);
  await assertSameWeights(staged, whole);
});
