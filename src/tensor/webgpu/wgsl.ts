/** WGSL snippets shared by the kernels. */
import type { DType } from '../tensor.ts';

/** Storage array element type used to bind a tensor of `dtype` (16- and 8-bit data packed in u32). */
export function arrayType(dtype: DType): string {
  if (dtype === 'f32') return 'f32';
  if (dtype === 'i32') return 'i32';
  return 'u32';
}

/**
 * `fn name(i: u32) -> f32` reading element i of the storage array `arr` holding `dtype`
 * (bf16/f16 two per u32, i8/u8 four per u32, little-endian).
 */
export function loadFn(name: string, arr: string, dtype: DType): string {
  switch (dtype) {
    case 'f32':
      return `fn ${name}(i: u32) -> f32 { return ${arr}[i]; }`;
    case 'i32':
      return `fn ${name}(i: u32) -> f32 { return f32(${arr}[i]); }`;
    case 'bf16':
      return `fn ${name}(i: u32) -> f32 {
  let w = ${arr}[i >> 1u];
  return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
}`;
    case 'f16':
      return `fn ${name}(i: u32) -> f32 {
  let v = unpack2x16float(${arr}[i >> 1u]);
  return select(v.x, v.y, (i & 1u) == 1u);
}`;
    case 'i8':
      return `fn ${name}(i: u32) -> f32 {
  return f32(extractBits(bitcast<i32>(${arr}[i >> 2u]), (i & 3u) * 8u, 8u));
}`;
    case 'u8':
      return `fn ${name}(i: u32) -> f32 { return f32(extractBits(${arr}[i >> 2u], (i & 3u) * 8u, 8u)); }`;
  }
}

/** Linear workgroup index for grids split over x and y by grid2(). */
export const FLAT_WG = 'fn flatWg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.y * nwg.x + wid.x; }';

/** A large negative stand-in for -inf that keeps exp() at exactly 0 without NaNs. */
export const NEG_BIG = '-3.0e38';
