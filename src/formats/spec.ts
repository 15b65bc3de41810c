/** Number-format descriptions shared by every layer (formats/ implements them). */

import type { GgmlBlockType } from './ggml-codes.ts';
import type { LlamaMix } from './llama-mix.ts';

export type Granularity = 'tensor' | 'row' | 'group';

/** b-bit integers, asymmetric (zero point) or symmetric, per tensor / row / group along the row. */
export interface IntSpec {
  kind: 'int';
  bits: number;
  symmetric: boolean;
  granularity: Granularity;
  /** group size along the last dimension when granularity is 'group' */
  group?: number;
  /** shrink factor applied to the range before computing scales (1 = no clipping) */
  clip?: number;
  /** static scale from calibration, used instead of the data's range (symmetric, per tensor) */
  staticScale?: number;
}

export type MxElement =
  | 'int8'
  | 'int7'
  | 'int6'
  | 'int5'
  | 'int4'
  | 'int3'
  | 'int2'
  | 'fp8_e4m3'
  | 'fp8_e5m2'
  | 'fp6_e3m2'
  | 'fp6_e2m3'
  | 'fp4_e2m1';

/** OCP Microscaling v1.0: blocks along the last dimension sharing an E8M0 scale. */
export interface MxSpec {
  kind: 'mx';
  element: MxElement;
  block: number;
  /** 'nearest' = half away from zero (microxcaling default), 'even' = half to even */
  rounding: 'nearest' | 'even';
}

/** FP8 with a per-tensor or per-row f32 scale mapping amax to the format's max. */
export interface Fp8Spec {
  kind: 'fp8';
  element: 'e4m3' | 'e5m2';
  granularity: 'tensor' | 'row';
}

/** NVFP4: E2M1 elements, blocks of 16 with FP8 E4M3 scales, one f32 tensor scale. */
export interface Nvfp4Spec {
  kind: 'nvfp4';
}

/**
 * llama.cpp's GGML block formats as weight formats (formats/ggml.ts, kquants.ts, ggml-codes.ts), rounded
 * exactly as llama.cpp's reference quantizers: q4_0 (blocks of 32, x = (q - 8) d, d = (value of largest
 * magnitude) / -8), q8_0 (x = q d, d = amax / 127), q5_0 (as q4_0 with 5 bits), q4_1 / q5_1
 * (x = q d + m), the K-quants q2_k ... q6_k (super-blocks of 256), the non-linear iq4_nl / iq4_xs
 * (formats/iq4.ts), and llama-quantize's file types as per-tensor mixes of them (formats/llama-mix.ts),
 * which a recipe resolves for each linear (quant/weights.ts linearWeightSpec).
 */
export interface GgmlSpec {
  kind: 'ggml';
  type: 'q4_0' | 'q8_0' | GgmlBlockType | LlamaMix;
}

export type FormatSpec = IntSpec | MxSpec | Fp8Spec | Nvfp4Spec | GgmlSpec;
