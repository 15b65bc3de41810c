/**
 * FlatQuant's training of one transform (Sun et al., 2024, "FlatQuant: Flatness Matters for LLM
 * Quantization"), for a group of linears that share an input (q/k/v, o, gate/up, down).
 *
 * An invertible affine transform P = D (L ⊗ R) of the input makes activations and weights flat
 * before quantization, leaving the product unchanged in full precision:
 *   y = x W^T = (x D (L ⊗ R)) ((L ⊗ R)^-1 D^-1 W^T) ≈ Qa(x D (L ⊗ R)) Qw(W D^-1 (L^-T ⊗ R^-T))^T
 * A row x read as an [n1, n2] matrix X is mapped by (L ⊗ R) to L^T X R, so the online cost per token
 * is n (n1 + n2), not n^2. D is the per-channel scaling (initialised SmoothQuant-style), Qw and Qa
 * are symmetric per-row quantizers whose ranges are shrunk by learnable clip factors sigmoid(theta):
 * one per weight output row and one per activation quantizer, as FlatQuant's LWC / LAC.
 *
 * Training follows FlatQuant's calibration (its train_utils.py / args_utils.py defaults, read for
 * the settings): AdamW (weight decay 0.01), lr for transforms and scaling, 10x for the clip factors,
 * cosine annealing to lr x 1e-3 over all steps, batches of whole samples in order, the loss divided
 * by its own value before the gradient, straight-through rounding. Factors start as random
 * orthogonal matrices (QR of a Gaussian). Where llmq differs, see the flatquant step (flatquant.ts).
 *
 * The big products (the linear outputs and their gradients) run on the Backend; the transform, the
 * quantizers and their gradients are host loops over the batch (O(rows n (n1 + n2))).
 */
import { mulberry32, type Rng } from '../calib/rng.ts';
import type { Backend, Tensor } from '../tensor/tensor.ts';

export interface TransformProblem {
  /** full-precision inputs [rows, n] */
  x: Float32Array;
  rows: number;
  /** the group's weights stacked by rows [m, n] (q, k, v rows one after the other) */
  w: Float32Array;
  m: number;
  /** Kronecker factor sizes, n1 * n2 = n */
  n1: number;
  n2: number;
  weightBits: number;
  actBits: number;
  /** initial per-channel scaling (trained); undefined leaves the scaling out */
  diag?: Float32Array;
}

export interface TrainSettings {
  epochs: number;
  lr: number;
  /** input rows per optimizer step (FlatQuant: 4 samples) */
  batchRows: number;
  seed: number;
  /** initial clip factor logit (FlatQuant: 4, sigmoid(4) = 0.982) */
  clipInit: number;
  onStep?: (done: number, total: number) => void;
}

export interface LearnedTransform {
  left: Float64Array;
  right: Float64Array;
  diag?: Float32Array;
  actClip: number;
  /** per weight output row */
  weightClips: Float32Array;
  /** mean loss of the first and the last epoch */
  lossFirst: number;
  lossLast: number;
}

/** [rows, p, q] -> [rows, q, p] (host copy). */
function swapInner(x: Float32Array, rows: number, p: number, q: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) {
    const o = r * p * q;
    for (let i = 0; i < p; i++) for (let c = 0; c < q; c++) out[o + c * p + i] = x[o + i * q + c];
  }
  return out;
}

/**
 * A product of host matrices on the backend: a [aRows, aCols] and w [wRows, wCols] are
 * uploaded, transposed first where asked, multiplied as linear(a, w) = a w^T, and read back.
 */
async function product(
  backend: Backend,
  [a, aRows, aCols, transA]: [Float32Array, number, number, boolean],
  [w, wRows, wCols, transW]: [Float32Array, number, number, boolean],
): Promise<Float32Array> {
  const temps: Tensor[] = [];
  const operand = (x: Float32Array, rows: number, cols: number, transpose: boolean) => {
    const t = backend.upload(x, [rows, cols], 'f32');
    temps.push(t);
    if (!transpose) return t;
    const tt = backend.transpose(t);
    temps.push(tt);
    return tt;
  };
  const y = backend.linear(operand(a, aRows, aCols, transA), operand(w, wRows, wCols, transW));
  const out = await backend.read(y);
  for (const t of [...temps, y]) t.dispose();
  return out;
}

/** y = a [rows, k] times w [wRows, k]^T on the backend, back on the host. */
function matmulT(
  backend: Backend,
  a: Float32Array,
  rows: number,
  k: number,
  w: Float32Array,
  wRows: number,
): Promise<Float32Array> {
  return product(backend, [a, rows, k, false], [w, wRows, k, false]);
}

/** a^T b for a [k, p], b [k, q] (host arrays) on the backend -> [p, q]. */
function matmulTN(
  backend: Backend,
  a: Float32Array,
  b: Float32Array,
  k: number,
  p: number,
  q: number,
): Promise<Float32Array> {
  return product(backend, [a, k, p, true], [b, k, q, true]);
}

const f32 = (m: Float64Array) => Float32Array.from(m);

/**
 * Rows of x [rows, n1 * n2], each read as X [n1, n2], mapped to A^T X B (the products on the backend).
 * Also returns t = X B with its inner dimensions swapped, [rows, n2, n1], for the gradient.
 */
export async function kronRows(
  backend: Backend,
  x: Float32Array,
  rows: number,
  a: Float64Array,
  n1: number,
  b: Float64Array,
  n2: number,
): Promise<{ out: Float32Array; tSwapped: Float32Array }> {
  const t = await matmulT(backend, x, rows * n1, n2, f32(transposeSquare(b, n2)), n2);
  const tSwapped = swapInner(t, rows, n1, n2);
  const u = await matmulT(backend, tSwapped, rows * n2, n1, f32(transposeSquare(a, n1)), n1);
  return { out: swapInner(u, rows, n2, n1), tSwapped };
}

/** Gradients of kronRows for the output gradient g: dA, dB and (when asked) dX. */
export async function kronRowsBackward(
  backend: Backend,
  x: Float32Array,
  tSwapped: Float32Array,
  g: Float32Array,
  rows: number,
  a: Float64Array,
  n1: number,
  b: Float64Array,
  n2: number,
  wantDx: boolean,
): Promise<{ da: Float64Array; db: Float64Array; dx?: Float32Array }> {
  const gSwapped = swapInner(g, rows, n1, n2);
  const da = await matmulTN(backend, tSwapped, gSwapped, rows * n2, n1, n1);
  const dtSwapped = await matmulT(backend, gSwapped, rows * n2, n1, f32(a), n1);
  const dt = swapInner(dtSwapped, rows, n2, n1);
  const db = await matmulTN(backend, x, dt, rows * n1, n2, n2);
  const dx = wantDx ? await matmulT(backend, dt, rows * n1, n2, f32(b), n2) : undefined;
  return { da: Float64Array.from(da), db: Float64Array.from(db), dx };
}

export interface RowQuant {
  out: Float32Array;
  /** per row: the range the scale came from (max |x|) and the scale */
  amax: Float32Array;
  scale: Float32Array;
}

/**
 * Symmetric per-row fake quantization with clip factors: scale = max(c amax, 1e-5) / (2^(b-1) - 1),
 * q = clamp(round(x / scale), qmin, 2^(b-1) - 1). clipOfRow(r) gives c for row r.
 */
export function quantizeRows(
  x: Float32Array,
  rows: number,
  n: number,
  bits: number,
  qmin: number,
  clipOfRow: (r: number) => number,
): RowQuant {
  const qmax = 2 ** (bits - 1) - 1;
  const out = new Float32Array(rows * n);
  const amax = new Float32Array(rows);
  const scale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let j = 0; j < n; j++) m = Math.max(m, Math.abs(x[r * n + j]));
    const s = Math.max(clipOfRow(r) * m, 1e-5) / qmax;
    amax[r] = m;
    scale[r] = s;
    for (let j = 0; j < n; j++) {
      const q = Math.round(x[r * n + j] / s);
      out[r * n + j] = Math.min(Math.max(q, qmin), qmax) * s;
    }
  }
  return { out, amax, scale };
}

/**
 * Straight-through gradient of quantizeRows: dx (zero where the code was clamped) and, per row,
 * d(loss)/d(clip factor) through the scale.
 */
export function quantizeRowsBackward(
  x: Float32Array,
  q: RowQuant,
  g: Float32Array,
  rows: number,
  n: number,
  bits: number,
  qmin: number,
  clipOfRow: (r: number) => number,
): { dx: Float32Array; dclip: Float64Array } {
  const qmax = 2 ** (bits - 1) - 1;
  const dx = new Float32Array(rows * n);
  const dclip = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const s = q.scale[r];
    let ds = 0;
    for (let j = 0; j < n; j++) {
      const e = r * n + j;
      const v = x[e] / s;
      const rounded = Math.round(v);
      const inside = rounded >= qmin && rounded <= qmax;
      const code = Math.min(Math.max(rounded, qmin), qmax);
      if (inside) dx[e] = g[e];
      ds += g[e] * (inside ? code - v : code);
    }
    if (clipOfRow(r) * q.amax[r] > 1e-5) dclip[r] = (ds * q.amax[r]) / qmax;
  }
  return { dx, dclip };
}

/** Inverse of an n x n matrix (Gauss-Jordan with partial pivoting, float64). */
function invert(m: Float64Array, n: number): Float64Array {
  const a = Float64Array.from(m);
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) inv[i * n + i] = 1;
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(a[r * n + c]) > Math.abs(a[p * n + c])) p = r;
    if (a[p * n + c] === 0) throw new Error('flatquant: a transform factor became singular');
    if (p !== c) for (const mat of [a, inv]) swapRows(mat, n, p, c);
    const d = 1 / a[c * n + c];
    for (let j = 0; j < n; j++) {
      a[c * n + j] *= d;
      inv[c * n + j] *= d;
    }
    for (let r = 0; r < n; r++) {
      const f = a[r * n + c];
      if (r === c || f === 0) continue;
      for (let j = 0; j < n; j++) {
        a[r * n + j] -= f * a[c * n + j];
        inv[r * n + j] -= f * inv[c * n + j];
      }
    }
  }
  return inv;
}

function swapRows(m: Float64Array, n: number, i: number, j: number): void {
  for (let c = 0; c < n; c++) {
    const t = m[i * n + c];
    m[i * n + c] = m[j * n + c];
    m[j * n + c] = t;
  }
}

/** A^-T, the factor the weights are transformed with. */
export function inverseTranspose(a: Float64Array, n: number): Float64Array {
  return transposeSquare(invert(a, n), n);
}

function transposeSquare(m: Float64Array, n: number): Float64Array {
  const t = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) t[j * n + i] = m[i * n + j];
  return t;
}

function matmulSquare(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const c = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let k = 0; k < n; k++) {
      const v = a[i * n + k];
      for (let j = 0; j < n; j++) c[i * n + j] += v * b[k * n + j];
    }
  return c;
}

/** A random orthogonal matrix: Q of the QR of a Gaussian matrix, signs fixed so that diag(R) > 0. */
export function randomOrthogonal(n: number, rng: Rng): Float64Array {
  const next = () => (rng() + 0.5) / 4294967296;
  const q = new Float64Array(n * n);
  for (let i = 0; i < n * n; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(next()));
    const angle = 2 * Math.PI * next();
    q[i] = radius * Math.cos(angle);
    if (i + 1 < n * n) q[i + 1] = radius * Math.sin(angle);
  }
  // modified Gram-Schmidt over the columns
  for (let c = 0; c < n; c++) {
    for (let p = 0; p < c; p++) {
      let dot = 0;
      for (let r = 0; r < n; r++) dot += q[r * n + c] * q[r * n + p];
      for (let r = 0; r < n; r++) q[r * n + c] -= dot * q[r * n + p];
    }
    let norm = 0;
    for (let r = 0; r < n; r++) norm += q[r * n + c] ** 2;
    norm = Math.sqrt(norm);
    for (let r = 0; r < n; r++) q[r * n + c] /= norm;
  }
  return q;
}

/** Factors of n closest to a square (FlatQuant's get_decompose_dim: n = (a - b)(a + b)). */
export function kroneckerSizes(n: number): [number, number] {
  let a = Math.ceil(Math.sqrt(n));
  for (;;) {
    const rest = a * a - n;
    const b = Math.round(Math.sqrt(rest));
    if (b * b === rest) return [a - b, a + b];
    a++;
  }
}

const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));

/** Trainable state: the factors, the scaling and the clip logits, each with AdamW moments. */
class Param {
  readonly m: Float64Array;
  readonly v: Float64Array;
  constructor(
    readonly value: Float64Array,
    readonly lrScale: number,
  ) {
    this.m = new Float64Array(value.length);
    this.v = new Float64Array(value.length);
  }

  /** One PyTorch AdamW step (betas 0.9 / 0.999, eps 1e-8, weight decay 0.01). */
  step(grad: Float64Array, lr: number, t: number): void {
    const b1 = 0.9;
    const b2 = 0.999;
    const c1 = 1 - b1 ** t;
    const c2 = 1 - b2 ** t;
    const p = this.value;
    for (let i = 0; i < p.length; i++) {
      p[i] -= lr * 0.01 * p[i];
      this.m[i] = b1 * this.m[i] + (1 - b1) * grad[i];
      this.v[i] = b2 * this.v[i] + (1 - b2) * grad[i] * grad[i];
      p[i] -= (lr * (this.m[i] / c1)) / (Math.sqrt(this.v[i] / c2) + 1e-8);
    }
  }
}

export interface TransformState {
  left: Float64Array;
  right: Float64Array;
  diag?: Float64Array;
  actClipLogit: number;
  weightClipLogits: Float64Array;
}

export interface LossAndGrads {
  loss: number;
  grads: { left: Float64Array; right: Float64Array; diag?: Float64Array; act: number; weights: Float64Array };
}

/**
 * Loss (mean squared error of the quantized group output against the full-precision one over `rows`
 * rows of x) and its gradients for every trainable part of the state.
 */
export async function lossAndGrads(
  backend: Backend,
  p: TransformProblem,
  s: TransformState,
  x: Float32Array,
  rows: number,
  /** the full-precision outputs x W^T of these rows, when the caller keeps them */
  target?: Float32Array,
): Promise<LossAndGrads & { target: Float32Array }> {
  const { n1, n2, m } = p;
  const n = n1 * n2;
  const diag = s.diag;
  const xs = diag ? scaleColumnsHost(x, diag, false) : x;
  const ws = diag ? scaleColumnsHost(p.w, diag, true) : p.w;
  const leftInvT = inverseTranspose(s.left, n1);
  const rightInvT = inverseTranspose(s.right, n2);
  const xt = await kronRows(backend, xs, rows, s.left, n1, s.right, n2);
  const wt = await kronRows(backend, ws, m, leftInvT, n1, rightInvT, n2);
  const actClip = sigmoid(s.actClipLogit);
  const weightClip = (r: number) => sigmoid(s.weightClipLogits[r]);
  const qa = quantizeRows(xt.out, rows, n, p.actBits, -(2 ** (p.actBits - 1)), () => actClip);
  // weights: the clamp of llmq's stored form (values clipped to +-c amax, then quantized), codes >= -qmax
  const wQmin = -(2 ** (p.weightBits - 1) - 1);
  const qw = quantizeRows(wt.out, m, n, p.weightBits, wQmin, weightClip);
  const [yq, yfp] = await Promise.all([
    matmulT(backend, qa.out, rows, n, qw.out, m),
    target ?? matmulT(backend, x, rows, n, p.w, m),
  ]);
  let loss = 0;
  for (let e = 0; e < yq.length; e++) loss += (yq[e] - yfp[e]) ** 2;
  loss /= yq.length;
  // FlatQuant divides the loss by its (detached) value: the gradient of loss / loss0
  const g = new Float32Array(yq.length);
  const k = loss > 0 ? 2 / yq.length / loss : 0;
  for (let e = 0; e < g.length; e++) g[e] = k * (yq[e] - yfp[e]);
  const [dxq, dwq] = await Promise.all([
    product(backend, [g, rows, m, false], [qw.out, m, n, true]),
    matmulTN(backend, g, qa.out, rows, m, n),
  ]);
  const ba = quantizeRowsBackward(
    xt.out,
    qa,
    dxq,
    rows,
    n,
    p.actBits,
    -(2 ** (p.actBits - 1)),
    () => actClip,
  );
  const bw = quantizeRowsBackward(wt.out, qw, dwq, m, n, p.weightBits, wQmin, weightClip);
  const ka = await kronRowsBackward(
    backend,
    xs,
    xt.tSwapped,
    ba.dx,
    rows,
    s.left,
    n1,
    s.right,
    n2,
    Boolean(diag),
  );
  const kw = await kronRowsBackward(
    backend,
    ws,
    wt.tSwapped,
    bw.dx,
    m,
    leftInvT,
    n1,
    rightInvT,
    n2,
    Boolean(diag),
  );
  const left = addInverseTransposeGrad(ka.da, kw.da, leftInvT, n1);
  const right = addInverseTransposeGrad(ka.db, kw.db, rightInvT, n2);
  let dDiag: Float64Array | undefined;
  if (diag && ka.dx && kw.dx) {
    dDiag = new Float64Array(n);
    for (let e = 0; e < rows * n; e++) dDiag[e % n] += ka.dx[e] * x[e];
    for (let e = 0; e < m * n; e++) {
      const j = e % n;
      dDiag[j] -= (kw.dx[e] * p.w[e]) / (diag[j] * diag[j]);
    }
  }
  let dAct = 0;
  for (let r = 0; r < rows; r++) dAct += ba.dclip[r];
  dAct *= actClip * (1 - actClip);
  const dWeights = bw.dclip.map((d, r) => d * weightClip(r) * (1 - weightClip(r)));
  return { loss, grads: { left, right, diag: dDiag, act: dAct, weights: dWeights }, target: yfp };
}

/** x [rows, n] with column j multiplied (or divided) by d[j]. */
function scaleColumnsHost(x: Float32Array, d: Float64Array, divide: boolean): Float32Array {
  const n = d.length;
  const f = divide ? d.map((v) => 1 / v) : d;
  const out = new Float32Array(x.length);
  for (let o = 0; o < x.length; o += n) for (let j = 0; j < n; j++) out[o + j] = x[o + j] * f[j];
  return out;
}

/**
 * d/dA of a loss through both A (activation side) and A^-T = invT (weight side): gradA + d(A^-T)/dA
 * applied to gradInvT, which is -A^-T gradInvT^T A^-T.
 */
function addInverseTransposeGrad(
  gradA: Float64Array,
  gradInvT: Float64Array,
  invT: Float64Array,
  n: number,
): Float64Array {
  const term = matmulSquare(matmulSquare(invT, transposeSquare(gradInvT, n), n), invT, n);
  return gradA.map((g, i) => g - term[i]);
}

/** The initial state: random orthogonal factors, the given scaling, clip logits at clipInit. */
export function initialState(p: TransformProblem, settings: TrainSettings): TransformState {
  const rng = mulberry32(settings.seed);
  return {
    left: randomOrthogonal(p.n1, rng),
    right: randomOrthogonal(p.n2, rng),
    diag: p.diag ? Float64Array.from(p.diag) : undefined,
    actClipLogit: settings.clipInit,
    weightClipLogits: new Float64Array(p.m).fill(settings.clipInit),
  };
}

/** Trains one group's transform; returns the learned factors, scaling and clip factors. */
export async function trainTransform(
  backend: Backend,
  p: TransformProblem,
  settings: TrainSettings,
): Promise<LearnedTransform> {
  const s = initialState(p, settings);
  const n = p.n1 * p.n2;
  const batchRows = Math.min(settings.batchRows, p.rows);
  const steps = Math.floor(p.rows / batchRows);
  const total = settings.epochs * steps;
  const left = new Param(s.left, 1);
  const right = new Param(s.right, 1);
  const diag = s.diag ? new Param(s.diag, 1) : undefined;
  const act = new Param(new Float64Array([s.actClipLogit]), 10);
  const weights = new Param(s.weightClipLogits, 10);
  const lrMin = settings.lr * 1e-3;
  // the full-precision outputs of each batch, kept across epochs when they take at most 256 MiB
  const keepTargets = p.rows * p.m <= 2 ** 26;
  const targets: Float32Array[] = [];
  let t = 0;
  let lossFirst = 0;
  let lossLast = 0;
  for (let epoch = 0; epoch < settings.epochs; epoch++) {
    let sum = 0;
    for (let b = 0; b < steps; b++) {
      const x = p.x.subarray(b * batchRows * n, (b + 1) * batchRows * n);
      s.actClipLogit = act.value[0];
      const { loss, grads, target } = await lossAndGrads(backend, p, s, x, batchRows, targets[b]);
      if (keepTargets) targets[b] = target;
      sum += loss;
      const cosine = (1 + Math.cos((Math.PI * t) / total)) / 2;
      const lrAt = (param: Param) => lrMin + (settings.lr * param.lrScale - lrMin) * cosine;
      t++;
      left.step(grads.left, lrAt(left), t);
      right.step(grads.right, lrAt(right), t);
      if (diag && grads.diag) diag.step(grads.diag, lrAt(diag), t);
      act.step(new Float64Array([grads.act]), lrAt(act), t);
      weights.step(grads.weights, lrAt(weights), t);
      settings.onStep?.(t, total);
    }
    if (epoch === 0) lossFirst = sum / steps;
    lossLast = sum / steps;
  }
  return {
    left: s.left,
    right: s.right,
    diag: s.diag ? Float32Array.from(s.diag) : undefined,
    actClip: sigmoid(act.value[0]),
    weightClips: Float32Array.from(s.weightClipLogits, sigmoid),
    lossFirst,
    lossLast,
  };
}
