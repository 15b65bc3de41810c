/**
 * W8A8 (and W4A4, ...) on integer hardware: linears whose weights are INT symmetric per output
 * channel and whose inputs are INT symmetric per token (dynamic, clipped or not), both of at most 8
 * bits, can run as an exact int8 x int8 -> int32 GEMM plus one scaling pass,
 * y = (Σ qx qw) · sx[m] · sw[n] (+ b), instead of an f32 GEMM over fake-quantized values. Both
 * compute the same products; they differ only in f32 rounding (the integer sum is exact, the
 * fake-quant GEMM rounds every partial sum). Codes of fewer bits are held in int8.
 */
import type { FormatSpec, IntSpec } from '../formats/spec.ts';
import type { Backend, IntRows, Tensor } from '../tensor/tensor.ts';
import { LINEARS, type Linear, type LlamaModel, plusResidual } from './llama.ts';

/** Integer weights of a linear on the device: int8 codes [out, in] and one scale per output channel. */
export interface Int8Weight extends IntRows {
  /** what the linear's input is quantized to (symmetric per-row INT; INT8 when absent) */
  input?: IntSpec;
}

/** Symmetric per-row INT of at most 8 bits with dynamic scales; `clipped` admits a clip factor. */
function isIntRowSym(spec: FormatSpec | undefined, clipped: boolean): spec is IntSpec {
  return (
    spec?.kind === 'int' &&
    spec.bits <= 8 &&
    spec.symmetric &&
    spec.granularity === 'row' &&
    spec.staticScale === undefined &&
    (clipped || spec.clip === undefined || spec.clip === 1)
  );
}

/** Whether a linear's stored weight and input quantization fit the int8 GEMM path. */
export function int8Eligible(lin: Pick<Linear, 'quantized' | 'inputQuant'>): boolean {
  const q = lin.quantized;
  return (
    q !== undefined &&
    !q.salient &&
    !q.gIdx &&
    isIntRowSym(q.encoded.spec, false) &&
    lin.inputQuant !== undefined &&
    !lin.inputQuant.keep &&
    isIntRowSym(lin.inputQuant.spec, true) &&
    q.encoded.cols % 4 === 0
  );
}

/** Uploads the INT8 codes and scales of every eligible linear; returns how many there were. */
export function useInt8Matmuls(model: LlamaModel): number {
  let count = 0;
  for (const layer of model.layers)
    for (const name of LINEARS) {
      const lin = layer.linears[name];
      if (lin.int8 || !int8Eligible(lin)) continue;
      const enc = lin.quantized!.encoded;
      const offset = 2 ** ((enc.spec as IntSpec).bits - 1);
      const codes = new Int8Array(enc.codes.length);
      for (let i = 0; i < codes.length; i++) codes[i] = enc.codes[i] - offset; // offset-binary codes
      lin.int8 = {
        codes: model.backend.upload(codes, [enc.rows, enc.cols], 'i8'),
        scales: model.backend.upload(enc.scales, [enc.rows], 'f32'),
        input: lin.inputQuant!.spec as IntSpec,
      };
      count++;
    }
  return count;
}

/**
 * Rows of x per int8 GEMM: its i32 result stays under 64 MiB, so every operand fits one storage
 * binding even where the limit is WebGPU's default 128 MiB. A multiple of 128 (the GEMM tile).
 */
export function int8ChunkRows(outFeatures: number): number {
  return Math.max(128, Math.floor(2 ** 26 / (4 * outFeatures) / 128) * 128);
}

/**
 * y = x W^T (+ b) (+ residual, added last) through the int8 GEMM: x quantized per row (w.input,
 * INT8 by default), W as codes.
 */
export function int8Linear(
  b: Backend,
  x: Tensor,
  w: Int8Weight,
  bias?: Tensor,
  residual?: Tensor,
  chunk = int8ChunkRows(w.codes.shape[0]),
): Tensor {
  const rows = x.shape[0];
  if (rows <= chunk) return int8LinearRows(b, x, w, bias, residual);
  const parts: Tensor[] = [];
  for (let r = 0; r < rows; r += chunk) {
    const xs = b.sliceRows(x, r, Math.min(rows, r + chunk));
    parts.push(int8LinearRows(b, xs, w, bias));
    xs.dispose();
  }
  const y = b.concatRows(parts);
  for (const t of parts) t.dispose();
  return plusResidual(b, y, residual);
}

function int8LinearRows(b: Backend, x: Tensor, w: Int8Weight, bias?: Tensor, residual?: Tensor): Tensor {
  const xq = b.quantizeRowsInt8(x, w.input);
  const y = int8Product(b, xq, w, bias, residual);
  disposeRows(xq);
  return y;
}

/** One input quantized once for several int8 linears (q/k/v, gate/up) that read it in one format. */
export interface SharedInt8Input {
  xq: IntRows;
  weights: Int8Weight[];
  biases: (Tensor | undefined)[];
}

/**
 * Whether linears of int8 weights `weights` can share one quantized input of `rows` rows: one input
 * format, and the rows fit each one's int8 GEMM (int8ChunkRows).
 */
export function canShareInt8Input(rows: number, weights: Int8Weight[]): boolean {
  const key = (w: Int8Weight) => JSON.stringify(w.input ?? null);
  return weights.every((w) => key(w) === key(weights[0]) && rows <= int8ChunkRows(w.codes.shape[0]));
}

/** Each linear's output from a shared quantized input. */
export function int8Products(b: Backend, s: SharedInt8Input): Tensor[] {
  return s.weights.map((w, i) => int8Product(b, s.xq, w, s.biases[i]));
}

export function disposeRows(r: IntRows): void {
  r.codes.dispose();
  r.scales.dispose();
}

/** The product of rows already quantized with a linear's int8 weight: one op where the backend fuses it. */
function int8Product(b: Backend, xq: IntRows, w: Int8Weight, bias?: Tensor, residual?: Tensor): Tensor {
  const fused = b.linearInt8?.(xq, w, bias, residual);
  if (fused) return fused;
  const acc = b.matmulInt8(xq.codes, w.codes);
  const y = b.scaleInt32(acc, xq.scales, w.scales, bias);
  acc.dispose();
  return plusResidual(b, y, residual);
}
