/** Number-format descriptions shared by every layer (formats/ implements them). */

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
 * llama.cpp's GGML block formats as weight formats (formats/ggml.ts): blocks of 32 along the row
 * with an fp16 scale, q4_0 = 4-bit codes x = (q - 8) d with d = (value of largest magnitude) / -8,
 * q8_0 = int8 codes x = q d with d = amax / 127; rounding exactly as llama.cpp's reference quantizers.
 */
export interface GgmlSpec {
  kind: 'ggml';
  type: 'q4_0' | 'q8_0';
}

export type FormatSpec = IntSpec | MxSpec | Fp8Spec | Nvfp4Spec | GgmlSpec;
