/**
 * The GPTQ Hessian of one linear layer and the factor of its inverse, in float64 on the host.
 *
 * For a linear y = W x with calibration inputs x_1..x_N (N = tokens), the layer loss
 * ||(W - Q) X||^2 / N has Hessian H = 2/N sum_t x_t x_t^T (cols x cols, one row/column per input
 * channel). HessianAccumulator sums x x^T in float64 batch by batch (or takes X^T X computed
 * elsewhere, e.g. on the GPU, through addGram) and finish() returns H.
 *
 * N counts tokens. The IST-DASLab reference divides by the number of sequences instead; the two
 * differ by a constant factor (the sequence length), which GPTQ is invariant to: the damping is
 * relative (a fraction of mean(diag H)) and the updates use ratios of Hinv entries. Only the
 * reported loss scales with it.
 *
 * choleskyInverseUpper(H) returns the upper triangular U with H^-1 = U^T U, the factor GPTQ walks
 * along (reference: cholesky(H), cholesky_inverse, cholesky(upper=True)). It is computed without
 * forming H^-1: if H = R R^T with R upper triangular (the Cholesky factorization of H with rows and
 * columns reversed), then H^-1 = R^-T R^-1, so U = R^-1. That is one Cholesky and one triangular
 * inverse (2/3 n^3 flops instead of 4/3 n^3), both blocked so that the work is dense NT matmuls.
 */
import { fail } from '../errors.ts';

/** Rows of the calibration batch transposed and multiplied at once in add(). */
const TOKEN_CHUNK = 64;
/** Block size of the blocked Cholesky and triangular inverse. */
const NB = 64;

/** Sums x x^T over calibration inputs of one linear (float64); finish() gives H = 2/N sum x x^T. */
export class HessianAccumulator {
  readonly cols: number;
  /** calibration tokens (rows) added so far */
  count = 0;
  /** upper triangle (diagonal included) of sum x x^T, row-major cols x cols */
  private readonly sum: Float64Array;
  private readonly chunk: Float64Array;

  constructor(cols: number) {
    if (!Number.isInteger(cols) || cols < 1)
      fail(`HessianAccumulator: cols must be a positive integer, got ${cols}`);
    this.cols = cols;
    this.sum = new Float64Array(cols * cols);
    this.chunk = new Float64Array(cols * TOKEN_CHUNK);
  }

  /** Adds the rows x cols row-major inputs x (one token per row). NaN/Infinity are refused. */
  add(x: ArrayLike<number>, rows: number, where = 'calibration input'): void {
    const n = this.cols;
    if (!Number.isInteger(rows) || rows < 0 || x.length !== rows * n)
      fail(`HessianAccumulator.add: got ${x.length} values for ${rows} rows of ${n} channels`);
    const xt = this.chunk;
    for (let t0 = 0; t0 < rows; t0 += TOKEN_CHUNK) {
      const T = Math.min(TOKEN_CHUNK, rows - t0);
      // transpose the chunk so that each channel's values are contiguous (dot products over tokens)
      for (let t = 0; t < T; t++) {
        const xo = (t0 + t) * n;
        for (let i = 0; i < n; i++) {
          const v = x[xo + i];
          if (!Number.isFinite(v)) fail(`${where}: non-finite value ${v} at token ${t0 + t}, channel ${i}`);
          xt[i * T + t] = v;
        }
      }
      // upper triangle only, in row panels: sum[i, j] += sum_t xt[i, t] xt[j, t] for j >= panel start
      for (let i0 = 0; i0 < n; i0 += NB) {
        const m = Math.min(NB, n - i0);
        addMatmulNT(1, this.sum, i0 * n + i0, n, xt, i0 * T, T, xt, i0 * T, T, m, n - i0, T);
      }
    }
    this.count += rows;
  }

  /**
   * Adds a precomputed gram matrix X^T X (cols x cols; only the upper triangle is read) of `tokens`
   * inputs, e.g. computed on the GPU batch by batch.
   */
  addGram(gram: ArrayLike<number>, tokens: number): void {
    const n = this.cols;
    if (gram.length !== n * n)
      fail(`HessianAccumulator.addGram: expected ${n} x ${n} values, got ${gram.length}`);
    for (let i = 0; i < n; i++) {
      for (let j = i; j < n; j++) {
        const v = gram[i * n + j];
        if (!Number.isFinite(v)) fail(`calibration gram matrix: non-finite value ${v} at (${i}, ${j})`);
        this.sum[i * n + j] += v;
      }
    }
    this.count += tokens;
  }

  /** H = 2/N sum x x^T (full symmetric cols x cols, a new array). */
  finish(): Float64Array {
    const n = this.cols;
    if (this.count === 0) fail('GPTQ Hessian: no calibration inputs were added');
    const f = 2 / this.count;
    const h = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = i; j < n; j++) {
        const v = this.sum[i * n + j] * f;
        h[i * n + j] = v;
        h[j * n + i] = v;
      }
    }
    return h;
  }
}

/**
 * c[i, j] += alpha * sum_{k < K} a[i, k] * b[j, k] for i < M, j < N, on row-major views with
 * offsets and leading dimensions (element (i, k) of a is a[ao + i * lda + k]). 4x4 register
 * blocking over panels of b rows that stay in cache. c must not overlap the parts of a and b read.
 */
export function addMatmulNT(
  alpha: number,
  c: Float64Array,
  co: number,
  ldc: number,
  a: Float64Array,
  ao: number,
  lda: number,
  b: Float64Array,
  bo: number,
  ldb: number,
  M: number,
  N: number,
  K: number,
): void {
  if (M <= 0 || N <= 0 || K <= 0) return;
  const panel = Math.max(4, Math.min(256, (Math.floor(16384 / K) >> 2) << 2));
  for (let jp = 0; jp < N; jp += panel) {
    const jEnd = Math.min(N, jp + panel);
    let i = 0;
    for (; i + 4 <= M; i += 4) {
      const ra0 = ao + i * lda;
      const ra1 = ra0 + lda;
      const ra2 = ra1 + lda;
      const ra3 = ra2 + lda;
      let j = jp;
      for (; j + 4 <= jEnd; j += 4) {
        const rb0 = bo + j * ldb;
        const rb1 = rb0 + ldb;
        const rb2 = rb1 + ldb;
        const rb3 = rb2 + ldb;
        let c00 = 0,
          c01 = 0,
          c02 = 0,
          c03 = 0,
          c10 = 0,
          c11 = 0,
          c12 = 0,
          c13 = 0;
        let c20 = 0,
          c21 = 0,
          c22 = 0,
          c23 = 0,
          c30 = 0,
          c31 = 0,
          c32 = 0,
          c33 = 0;
        for (let k = 0; k < K; k++) {
          const x0 = a[ra0 + k],
            x1 = a[ra1 + k],
            x2 = a[ra2 + k],
            x3 = a[ra3 + k];
          const y0 = b[rb0 + k],
            y1 = b[rb1 + k],
            y2 = b[rb2 + k],
            y3 = b[rb3 + k];
          c00 += x0 * y0;
          c01 += x0 * y1;
          c02 += x0 * y2;
          c03 += x0 * y3;
          c10 += x1 * y0;
          c11 += x1 * y1;
          c12 += x1 * y2;
          c13 += x1 * y3;
          c20 += x2 * y0;
          c21 += x2 * y1;
          c22 += x2 * y2;
          c23 += x2 * y3;
          c30 += x3 * y0;
          c31 += x3 * y1;
          c32 += x3 * y2;
          c33 += x3 * y3;
        }
        let o = co + i * ldc + j;
        c[o] += alpha * c00;
        c[o + 1] += alpha * c01;
        c[o + 2] += alpha * c02;
        c[o + 3] += alpha * c03;
        o += ldc;
        c[o] += alpha * c10;
        c[o + 1] += alpha * c11;
        c[o + 2] += alpha * c12;
        c[o + 3] += alpha * c13;
        o += ldc;
        c[o] += alpha * c20;
        c[o + 1] += alpha * c21;
        c[o + 2] += alpha * c22;
        c[o + 3] += alpha * c23;
        o += ldc;
        c[o] += alpha * c30;
        c[o + 1] += alpha * c31;
        c[o + 2] += alpha * c32;
        c[o + 3] += alpha * c33;
      }
      for (; j < jEnd; j++) {
        const rb = bo + j * ldb;
        let s0 = 0,
          s1 = 0,
          s2 = 0,
          s3 = 0;
        for (let k = 0; k < K; k++) {
          const y = b[rb + k];
          s0 += a[ra0 + k] * y;
          s1 += a[ra1 + k] * y;
          s2 += a[ra2 + k] * y;
          s3 += a[ra3 + k] * y;
        }
        const o = co + i * ldc + j;
        c[o] += alpha * s0;
        c[o + ldc] += alpha * s1;
        c[o + 2 * ldc] += alpha * s2;
        c[o + 3 * ldc] += alpha * s3;
      }
    }
    for (; i < M; i++) {
      const ra = ao + i * lda;
      for (let j = jp; j < jEnd; j++) {
        const rb = bo + j * ldb;
        let s = 0;
        for (let k = 0; k < K; k++) s += a[ra + k] * b[rb + k];
        c[co + i * ldc + j] += alpha * s;
      }
    }
  }
}

/**
 * In-place lower Cholesky factorization a = L L^T of a symmetric positive definite n x n matrix
 * (only the lower triangle is read; L overwrites it; the strict upper triangle is clobbered).
 * Blocked left-looking by row panels. Returns -1, or the first row whose pivot is not positive.
 */
export function choleskyLowerInPlace(a: Float64Array, n: number): number {
  for (let i0 = 0; i0 < n; i0 += NB) {
    const i1 = Math.min(n, i0 + NB);
    const m = i1 - i0;
    for (let j0 = 0; j0 < i0; j0 += NB) {
      // L[I, J] = (A[I, J] - L[I, :j0] L[J, :j0]^T) L[J, J]^-T
      addMatmulNT(-1, a, i0 * n + j0, n, a, i0 * n, n, a, j0 * n, n, m, NB, j0);
      for (let i = i0; i < i1; i++) {
        const ri = i * n;
        for (let j = j0; j < j0 + NB; j++) {
          const rj = j * n;
          let s = a[ri + j];
          for (let k = j0; k < j; k++) s -= a[ri + k] * a[rj + k];
          a[ri + j] = s / a[rj + j];
        }
      }
    }
    // diagonal block: A[I, I] - L[I, :i0] L[I, :i0]^T, then its own small factorization
    addMatmulNT(-1, a, i0 * n + i0, n, a, i0 * n, n, a, i0 * n, n, m, m, i0);
    for (let i = i0; i < i1; i++) {
      const ri = i * n;
      for (let j = i0; j <= i; j++) {
        const rj = j * n;
        let s = a[ri + j];
        for (let k = i0; k < j; k++) s -= a[ri + k] * a[rj + k];
        if (j < i) a[ri + j] = s / a[rj + j];
        else if (s > 0) a[ri + i] = Math.sqrt(s);
        else return i;
      }
    }
  }
  return -1;
}

/**
 * Inverse X = L^-1 of a lower triangular n x n matrix L (lower triangle of `l`), returned
 * transposed: y[j * n + i] = X[i, j] (so y is upper triangular, zeros below the diagonal). Storing
 * X by columns keeps the blocked update an NT matmul: X[I, :i0] = -X[I, I] (L[I, :i0] X[:i0, :i0]).
 */
export function invertLowerTransposed(l: Float64Array, n: number): Float64Array {
  const y = new Float64Array(n * n);
  const p = new Float64Array(NB * n);
  const acc = new Float64Array(n);
  for (let i0 = 0; i0 < n; i0 += NB) {
    const i1 = Math.min(n, i0 + NB);
    const m = i1 - i0;
    // diagonal block by forward substitution: X[i, j] = -(sum_{k=j}^{i-1} L[i, k] X[k, j]) / L[i, i]
    for (let i = i0; i < i1; i++) {
      const ri = i * n;
      const inv = 1 / l[ri + i];
      y[i * n + i] = inv;
      for (let j = i0; j < i; j++) {
        const rj = j * n;
        let s = 0;
        for (let k = j; k < i; k++) s += l[ri + k] * y[rj + k];
        y[rj + i] = -s * inv;
      }
    }
    if (i0 === 0) continue;
    // P = -L[I, :i0] X[:i0, :i0], in panels of columns j (X[k, j] = 0 for k < j: start K at the panel)
    p.fill(0, 0, m * i0);
    for (let jj = 0; jj < i0; jj += NB) {
      const w = Math.min(NB, i0 - jj);
      addMatmulNT(-1, p, jj, i0, l, i0 * n + jj, n, y, jj * n + jj, n, m, w, i0 - jj);
    }
    // X[i, :i0] = sum_{t in I, t <= i} X[i, t] P[t, :]
    for (let i = i0; i < i1; i++) {
      acc.fill(0, 0, i0);
      for (let t = i0; t <= i; t++) {
        const x = y[t * n + i];
        const pr = (t - i0) * i0;
        for (let j = 0; j < i0; j++) acc[j] += x * p[pr + j];
      }
      for (let j = 0; j < i0; j++) y[j * n + i] = acc[j];
    }
  }
  return y;
}

/**
 * The upper triangular U with h^-1 = U^T U (row-major, zeros below the diagonal) of a symmetric
 * positive definite n x n matrix. `h` is overwritten (it becomes U, which is returned), so pass a
 * copy to keep it. `onFail(i)` is called when the pivot of row/column i is not positive (default:
 * a one-line error).
 */
export function choleskyInverseUpper(
  h: Float64Array,
  n: number,
  onFail: (index: number) => never = (i) => fail(`matrix is not positive definite (pivot ${i} of ${n})`),
): Float64Array {
  if (h.length !== n * n) fail(`choleskyInverseUpper: expected ${n} x ${n} values, got ${h.length}`);
  // J h J (rows and columns reversed) is the flat array reversed
  h.reverse();
  const bad = choleskyLowerInPlace(h, n);
  if (bad >= 0) onFail(n - 1 - bad);
  // h = J M M^T J = R R^T with R = J M J upper, and U = R^-1 = J M^-1 J: U[a, b] = X[n-1-a, n-1-b]
  const y = invertLowerTransposed(h, n);
  for (let a = 0; a < n; a++) {
    const ra = a * n;
    for (let b = 0; b < a; b++) h[ra + b] = 0;
    const col = n - 1 - a;
    for (let b = a; b < n; b++) h[ra + b] = y[(n - 1 - b) * n + col];
  }
  return h;
}
