/**
 * Scalar rounding and exact power-of-two helpers used by every number format.
 *
 * JavaScript's Math.round rounds half *up* (Math.round(-2.5) === -2, Math.round(2.5) === 3); no
 * quantizer in llmq uses it. The two rounding modes the reference tools use are:
 * - roundHalfEven: IEEE roundTiesToEven, what torch.round / numpy.round do (AutoAWQ, GPTQ,
 *   SmoothQuant, llm-compressor, torchao casts, hardware FP8/FP4 conversions);
 * - roundHalfAway: floor(|x| + 0.5) with the sign put back, microxcaling's MX default 'nearest'.
 *
 * Both are exact for every double (no x + 0.5 double rounding: the fraction is taken first) and
 * keep the sign of a zero result as torch does (roundHalfEven(-0.4) is -0).
 */

/** Round half to even (torch.round). NaN stays NaN, +-Infinity stays +-Infinity. */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f; // exact: x and floor(x) share the binade or d is x itself
  const r = d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
  return r === 0 && (x < 0 || Object.is(x, -0)) ? -0 : r;
}

/** Round half away from zero (microxcaling 'nearest'): 0.5 -> 1, 2.5 -> 3, -2.5 -> -3. */
export function roundHalfAway(x: number): number {
  const a = Math.abs(x);
  let r = Math.floor(a);
  if (a - r >= 0.5) r += 1;
  return x < 0 || Object.is(x, -0) ? -r : r;
}

export type RoundingMode = 'nearest' | 'even';

/** Round with an MX rounding mode: 'nearest' = half away from zero, 'even' = half to even. */
export function roundHalf(x: number, mode: RoundingMode): number {
  return mode === 'even' ? roundHalfEven(x) : roundHalfAway(x);
}

/**
 * Round-half-even of a finite or infinite value to an integer, with -0 turned into +0. Internal
 * hot-path variant for the INT quantizers (whose integer codes have no negative zero).
 */
export function rneInt(t: number): number {
  const f = Math.floor(t);
  const d = t - f;
  return (d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f) + 0;
}

const F64 = new Float64Array(1);
const U32 = new Uint32Array(F64.buffer);
/** index of the 32-bit word holding the sign and exponent of a double on this platform */
const HI = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 1 : 0;
const LO = 1 - HI;
const TWO64 = 2 ** 64;

/**
 * floor(log2(a)) for a finite a > 0, exactly (read from the exponent bits; Math.log2 can round a
 * value just below a power of two up to the integer). Returns a very negative number for a = 0.
 */
export function floorLog2(a: number): number {
  F64[0] = a;
  const e = (U32[HI] >>> 20) & 0x7ff;
  if (e !== 0) return e - 1023;
  F64[0] = a * TWO64; // subnormal double: renormalize
  return ((U32[HI] >>> 20) & 0x7ff) - 1023 - 64;
}

/** 2^e exactly, for an integer e in [-1022, 1023]. */
export function pow2(e: number): number {
  U32[HI] = ((e + 1023) & 0x7ff) << 20;
  U32[LO] = 0;
  return F64[0];
}
