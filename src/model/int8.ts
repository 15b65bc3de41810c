/**
 * W8A8 on integer hardware: linears whose weights are INT8 symmetric per output channel and whose
 * inputs are INT8 symmetric per token (dynamic) can run as an exact int8 x int8 -> int32 GEMM plus
 * one scaling pass, y = (Σ qx qw) · sx[m] · sw[n] (+ b), instead of an f32 GEMM over fake-quantized
 * values. Both compute the same products; they differ only in f32 rounding (the integer sum is
 * exact, the fake-quant GEMM rounds every partial sum), so perplexity agrees to ~1e-6.
 */
import type { FormatSpec } from '../formats/spec.ts';
import type { Backend, Tensor } from '../tensor/tensor.ts';
import { LINEARS, type Linear, type LlamaModel } from './llama.ts';

/** INT8 weights of a linear on the device: codes [out, in] and one scale per output channel. */
export interface Int8Weight {
  codes: Tensor;
  scales: Tensor;
}

function isInt8RowSym(spec: FormatSpec | undefined): boolean {
  return (
    spec?.kind === 'int' &&
    spec.bits === 8 &&
    spec.symmetric &&
    spec.granularity === 'row' &&
    spec.staticScale === undefined &&
    (spec.clip === undefined || spec.clip === 1)
  );
}

/** Whether a linear's stored weight and input quantization fit the int8 GEMM path. */
export function int8Eligible(lin: Pick<Linear, 'quantized' | 'inputQuant'>): boolean {
  const q = lin.quantized;
  return (
    q !== undefined &&
    !q.salient &&
    !q.gIdx &&
    isInt8RowSym(q.encoded.spec) &&
    lin.inputQuant !== undefined &&
    !lin.inputQuant.keep &&
    isInt8RowSym(lin.inputQuant.spec) &&
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
      const codes = new Int8Array(enc.codes.length);
      for (let i = 0; i < codes.length; i++) codes[i] = enc.codes[i] - 128; // offset-binary codes
      lin.int8 = {
        codes: model.backend.upload(codes, [enc.rows, enc.cols], 'i8'),
        scales: model.backend.upload(enc.scales, [enc.rows], 'f32'),
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

/** y = x W^T (+ b) through the int8 GEMM: x quantized per row to INT8, W given as INT8 codes. */
export function int8Linear(
  b: Backend,
  x: Tensor,
  w: Int8Weight,
  bias?: Tensor,
  chunk = int8ChunkRows(w.codes.shape[0]),
): Tensor {
  const rows = x.shape[0];
  if (rows <= chunk) return int8LinearRows(b, x, w, bias);
  const parts: Tensor[] = [];
  for (let r = 0; r < rows; r += chunk) {
    const xs = b.sliceRows(x, r, Math.min(rows, r + chunk));
    parts.push(int8LinearRows(b, xs, w, bias));
    xs.dispose();
  }
  const y = b.concatRows(parts);
  for (const t of parts) t.dispose();
  return y;
}

function int8LinearRows(b: Backend, x: Tensor, w: Int8Weight, bias?: Tensor): Tensor {
  const { codes, scales } = b.quantizeRowsInt8(x);
  const acc = b.matmulInt8(codes, w.codes);
  const y = b.scaleInt32(acc, scales, w.scales, bias);
  for (const t of [codes, scales, acc]) t.dispose();
  return y;
}
