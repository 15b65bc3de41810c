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

/**
 * Storage element type binding `dtype` in chunks of four values (f32: vec4<f32>; 16-bit: vec2<u32>),
 * or undefined for dtypes the GEMV reads one value at a time.
 */
export function chunkArrayType(dtype: DType): string | undefined {
  if (dtype === 'f32') return 'vec4<f32>';
  if (dtype === 'bf16' || dtype === 'f16') return 'vec2<u32>';
  return undefined;
}

/** Whether arrays of `dtypes` can be read four values a load: K and every element offset multiples of 4, each dtype one chunkArrayType binds. */
export function chunksFit(K: number, offsets: number[], dtypes: DType[]): boolean {
  return (
    K % 4 === 0 && offsets.every((o) => o % 4 === 0) && dtypes.every((d) => chunkArrayType(d) !== undefined)
  );
}

/**
 * Over an array bound with chunkArrayType: `fn name4(q: u32) -> vec4<f32>` (values 4q..4q+3) and
 * `fn name(i: u32) -> f32` (value i), the same values loadFn reads from the scalar binding.
 */
export function chunkLoadFns(name: string, arr: string, dtype: DType): string {
  const widen = (pair: string) =>
    dtype === 'f16'
      ? `unpack2x16float(${pair})`
      : `vec2<f32>(bitcast<f32>(${pair} << 16u), bitcast<f32>(${pair} & 0xffff0000u))`;
  if (dtype === 'f32')
    return `fn ${name}4(q: u32) -> vec4<f32> { return ${arr}[q]; }
fn ${name}(i: u32) -> f32 { return ${arr}[i >> 2u][i & 3u]; }`;
  return `fn ${name}4(q: u32) -> vec4<f32> {
  let v = ${arr}[q];
  return vec4<f32>(${widen('v.x')}, ${widen('v.y')});
}
fn ${name}(i: u32) -> f32 { return ${name}4(i >> 2u)[i & 3u]; }`;
}

/** 0, 1, ..., n - 1: the indices code generators unroll over. */
export const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Linear workgroup index for grids split over x and y by grid2(). */
export const FLAT_WG = 'fn flatWg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.y * nwg.x + wid.x; }';

/** A large negative stand-in for -inf that keeps exp() at exactly 0 without NaNs. */
export const NEG_BIG = '-3.0e38';

/**
 * WGSL of a strided loop: thread `lane` of `lanes` takes items lane, lane + lanes, ... below `count`.
 * A step of `steps` items runs `load(j, item)` for each (the item index clamped in range, so every load
 * is valid), then `use(j)` for those in range, in item order: sums do not depend on `steps`, and a
 * step's loads are in flight together (a loop of one load a step waits a memory latency each).
 */
export function stridedLoop(o: {
  count: string;
  lane: string;
  lanes: number;
  steps: number;
  load: (j: number, item: string) => string;
  use: (j: number) => string;
}): string {
  const js = range(o.steps);
  const inRange = (j: number) => `i0 + ${j * o.lanes}u < ${o.count}`;
  const loads = js.map(
    (j) => `let i${j} = ${j === 0 ? 'i0' : `select(i0, i0 + ${j * o.lanes}u, ${inRange(j)})`};
      ${o.load(j, `i${j}`)}`,
  );
  const uses = js.map((j) => (j === 0 ? `{ ${o.use(j)} }` : `if (${inRange(j)}) { ${o.use(j)} }`));
  return `
    for (var i0 = ${o.lane}; i0 < ${o.count}; i0 += ${o.lanes * o.steps}u) {
      ${loads.join('\n      ')}
      ${uses.join('\n      ')}
    }`;
}

/** A float32 constant in WGSL, bit-exact (its bits reinterpreted). */
export function f32Literal(v: number): string {
  const bits = new Uint32Array(new Float32Array([v]).buffer)[0];
  return `bitcast<f32>(${bits}u)`;
}
