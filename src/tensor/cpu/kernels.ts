/**
 * Compute kernels of the CPU backend. They run on the main thread and in worker threads: the pool
 * ships their source text to the workers, so each must be self-contained (no imports, no outer
 * variables, no nested functions) and work on a sub-range given by [start, end).
 */
import type { CachedAttentionShape } from '../tensor.ts';
import { attentionBlocks } from './attention-wasm.ts';
import { matmulWasm, packWasm } from './wasm.ts';

/**
 * c[i, j] = sum_k a[i, k] * b[j, k] (+ bias[j]) for rows i in [start, end) of a, or for rows j of b
 * when splitB is set. 4x4 register blocking with B processed in panels that stay in cache.
 */
export function matmulNT(
  a: Float32Array,
  b: Float32Array,
  c: Float32Array,
  bias: Float32Array | null,
  M: number,
  N: number,
  K: number,
  splitB: number,
  start: number,
  end: number,
): void {
  const i0 = splitB ? 0 : start;
  const i1 = splitB ? M : end;
  const j0 = splitB ? start : 0;
  const j1 = splitB ? end : N;
  const panel = Math.max(4, Math.min(256, (Math.floor(65536 / K) >> 2) << 2));
  for (let jp = j0; jp < j1; jp += panel) {
    const jpEnd = Math.min(j1, jp + panel);
    let i = i0;
    for (; i + 4 <= i1; i += 4) {
      const ra0 = i * K;
      const ra1 = ra0 + K;
      const ra2 = ra1 + K;
      const ra3 = ra2 + K;
      let j = jp;
      for (; j + 4 <= jpEnd; j += 4) {
        const rb0 = j * K;
        const rb1 = rb0 + K;
        const rb2 = rb1 + K;
        const rb3 = rb2 + K;
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
        const d0 = bias ? bias[j] : 0,
          d1 = bias ? bias[j + 1] : 0;
        const d2 = bias ? bias[j + 2] : 0,
          d3 = bias ? bias[j + 3] : 0;
        let o = i * N + j;
        c[o] = c00 + d0;
        c[o + 1] = c01 + d1;
        c[o + 2] = c02 + d2;
        c[o + 3] = c03 + d3;
        o += N;
        c[o] = c10 + d0;
        c[o + 1] = c11 + d1;
        c[o + 2] = c12 + d2;
        c[o + 3] = c13 + d3;
        o += N;
        c[o] = c20 + d0;
        c[o + 1] = c21 + d1;
        c[o + 2] = c22 + d2;
        c[o + 3] = c23 + d3;
        o += N;
        c[o] = c30 + d0;
        c[o + 1] = c31 + d1;
        c[o + 2] = c32 + d2;
        c[o + 3] = c33 + d3;
      }
      for (; j < jpEnd; j++) {
        const rb = j * K;
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
        const d = bias ? bias[j] : 0;
        c[i * N + j] = s0 + d;
        c[(i + 1) * N + j] = s1 + d;
        c[(i + 2) * N + j] = s2 + d;
        c[(i + 3) * N + j] = s3 + d;
      }
    }
    for (; i < i1; i++) {
      const ra = i * K;
      for (let j = jp; j < jpEnd; j++) {
        const rb = j * K;
        let s = 0;
        for (let k = 0; k < K; k++) s += a[ra + k] * b[rb + k];
        c[i * N + j] = s + (bias ? bias[j] : 0);
      }
    }
  }
}

/** Widens 16-bit float bits (bf16 when isBf16, else IEEE f16) in [start, end) to f32. */
export function widen16(
  src: Uint16Array,
  dst: Float32Array,
  isBf16: number,
  start: number,
  end: number,
): void {
  if (isBf16) {
    const dstBits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
    for (let i = start; i < end; i++) dstBits[i] = src[i] << 16;
    return;
  }
  for (let i = start; i < end; i++) {
    const h = src[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) dst[i] = sign * frac * 2 ** -24;
    else if (exp === 31) dst[i] = frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else dst[i] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
}

/** out = x + y (op 0), x - y (op 1) or silu(x) * y (op 2) over elements [start, end). */
export function map2Elements(
  x: Float32Array,
  y: Float32Array,
  out: Float32Array,
  op: number,
  start: number,
  end: number,
): void {
  if (op === 0) for (let i = start; i < end; i++) out[i] = x[i] + y[i];
  else if (op === 1) for (let i = start; i < end; i++) out[i] = x[i] - y[i];
  else
    for (let i = start; i < end; i++) {
      const g = x[i];
      out[i] = Math.fround(g / (1 + Math.exp(-g))) * y[i];
    }
}

/** RMSNorm of rows [start, end) of src [*, D] with weight w, as PyTorch's f32 LlamaRMSNorm. */
export function rmsnormRows(
  src: Float32Array,
  w: Float32Array,
  out: Float32Array,
  D: number,
  eps: number,
  start: number,
  end: number,
): void {
  for (let r = start; r < end; r++) {
    const o = r * D;
    let ss = 0;
    for (let i = 0; i < D; i++) ss += src[o + i] * src[o + i];
    const inv = Math.fround(1 / Math.sqrt(Math.fround(ss / D) + eps));
    for (let i = 0; i < D; i++) out[o + i] = w[i] * Math.fround(src[o + i] * inv);
  }
}

/**
 * Causal grouped-query attention for the (sequence, head) units in [start, end), unit = b * H + h.
 * Scores, softmax and the weighted sum are accumulated in f64 (the reference is f32 PyTorch).
 */
export function attentionHeads(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  seqLen: number,
  numHeads: number,
  numKvHeads: number,
  headDim: number,
  start: number,
  end: number,
): void {
  const qStride = numHeads * headDim;
  const kvStride = numKvHeads * headDim;
  const group = numHeads / numKvHeads;
  const scale = 1 / Math.sqrt(headDim);
  const scores = new Float64Array(seqLen);
  const acc = new Float64Array(headDim);
  for (let unit = start; unit < end; unit++) {
    const b = Math.floor(unit / numHeads);
    const h = unit % numHeads;
    const kvh = Math.floor(h / group);
    const rowBase = b * seqLen;
    for (let i = 0; i < seqLen; i++) {
      const qo = (rowBase + i) * qStride + h * headDim;
      let max = Number.NEGATIVE_INFINITY;
      for (let j = 0; j <= i; j++) {
        const ko = (rowBase + j) * kvStride + kvh * headDim;
        // two independent sums: one chain would wait on the add latency every step
        let s0 = 0;
        let s1 = 0;
        for (let d = 0; d < headDim; d += 2) {
          s0 += q[qo + d] * k[ko + d];
          s1 += q[qo + d + 1] * k[ko + d + 1];
        }
        const s = (s0 + s1) * scale;
        scores[j] = s;
        if (s > max) max = s;
      }
      let sum = 0;
      for (let j = 0; j <= i; j++) {
        const e = Math.exp(scores[j] - max);
        scores[j] = e;
        sum += e;
      }
      acc.fill(0);
      // two rows of v per pass halve the loads and stores of acc
      let j = 0;
      for (; j + 1 <= i; j += 2) {
        const p0 = scores[j];
        const p1 = scores[j + 1];
        const v0 = (rowBase + j) * kvStride + kvh * headDim;
        const v1 = v0 + kvStride;
        for (let d = 0; d < headDim; d++) acc[d] += p0 * v[v0 + d] + p1 * v[v1 + d];
      }
      if (j === i) {
        const p = scores[j];
        const vo = (rowBase + j) * kvStride + kvh * headDim;
        for (let d = 0; d < headDim; d++) acc[d] += p * v[vo + d];
      }
      const inv = 1 / sum;
      for (let d = 0; d < headDim; d++) out[qo + d] = acc[d] * inv;
    }
  }
}

/**
 * Attention of `queries` new rows of one sequence at positions past.. against a KV cache (generation:
 * usually one query), f64 softmax, on the calling thread.
 */
export function attentionCachedRows(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  s: CachedAttentionShape,
): void {
  const { queries, past, numHeads, numKvHeads, headDim } = s;
  const kvStride = numKvHeads * headDim;
  const group = numHeads / numKvHeads;
  const scale = 1 / Math.sqrt(headDim);
  const scores = new Float64Array(past + queries);
  const acc = new Float64Array(headDim);
  for (let i = 0; i < queries; i++) {
    const visible = past + i + 1;
    for (let h = 0; h < numHeads; h++) {
      const qo = (i * numHeads + h) * headDim;
      const kvo = Math.floor(h / group) * headDim;
      let max = Number.NEGATIVE_INFINITY;
      for (let j = 0; j < visible; j++) {
        const ko = j * kvStride + kvo;
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += q[qo + d] * k[ko + d];
        scores[j] = dot * scale;
        if (scores[j] > max) max = scores[j];
      }
      acc.fill(0);
      let sum = 0;
      for (let j = 0; j < visible; j++) {
        const e = Math.exp(scores[j] - max);
        sum += e;
        const vo = j * kvStride + kvo;
        for (let d = 0; d < headDim; d++) acc[d] += e * v[vo + d];
      }
      for (let d = 0; d < headDim; d++) out[qo + d] = acc[d] / sum;
    }
  }
}

/** Per-row NLL of targets under log-softmax(logits) for rows [start, end), in f64. */
export function nllRows(
  logits: Float32Array,
  targets: Int32Array,
  out: Float32Array,
  vocab: number,
  start: number,
  end: number,
): void {
  for (let r = start; r < end; r++) {
    const o = r * vocab;
    let max = Number.NEGATIVE_INFINITY;
    for (let i = 0; i < vocab; i++) if (logits[o + i] > max) max = logits[o + i];
    let sum = 0;
    for (let i = 0; i < vocab; i++) sum += Math.exp(logits[o + i] - max);
    out[r] = Math.log(sum) + max - logits[o + targets[r]];
  }
}

/**
 * Per row of [rows, vocab]: out[2r] = KL(softmax(p) || softmax(q)) in f64, out[2r + 1] = 1 when the
 * argmaxes (lowest index on ties) are equal. Self-contained: workers receive it as source text.
 */
export function klRows(
  p: Float32Array,
  q: Float32Array,
  out: Float32Array,
  vocab: number,
  start: number,
  end: number,
): void {
  const argmax = (x: Float32Array, o: number): number => {
    let best = 0;
    for (let i = 1; i < vocab; i++) if (x[o + i] > x[o + best]) best = i;
    return best;
  };
  const logSumExp = (x: Float32Array, o: number, max: number): number => {
    let sum = 0;
    for (let i = 0; i < vocab; i++) sum += Math.exp(x[o + i] - max);
    return Math.log(sum) + max;
  };
  for (let r = start; r < end; r++) {
    const o = r * vocab;
    const [ip, iq] = [argmax(p, o), argmax(q, o)];
    const lseP = logSumExp(p, o, p[o + ip]);
    const lseQ = logSumExp(q, o, q[o + iq]);
    let kl = 0;
    for (let i = 0; i < vocab; i++) {
      const lp = p[o + i] - lseP;
      kl += Math.exp(lp) * (lp - (q[o + i] - lseQ));
    }
    out[2 * r] = Math.max(kl, 0);
    out[2 * r + 1] = ip === iq ? 1 : 0;
  }
}

export const KERNELS = {
  matmulNT,
  matmulWasm,
  packWasm,
  widen16,
  map2Elements,
  rmsnormRows,
  attentionHeads,
  attentionBlocks,
  nllRows,
  klRows,
};
export type KernelName = keyof typeof KERNELS;
