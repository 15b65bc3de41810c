/**
 * Number formats (src/formats): hand-computed vectors for every format (ties in both rounding
 * modes, zeros, all-equal and negative-only groups, saturation, subnormal elements, NaN/Inf,
 * clipping), encode/decode round trips, bit packing, format names, and randomized comparisons
 * against naive float64 reimplementations written here from the formulas.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { UserError } from '../src/errors.ts';
import {
  bitsPerElement,
  castE4M3,
  castE5M2,
  codeBits,
  decode,
  describeFormat,
  E2M1,
  E2M3,
  E3M2,
  E4M3,
  E5M2,
  e4m3Code,
  e5m2Code,
  encode,
  type FormatSpec,
  fakeQuantInt,
  fakeQuantRows,
  floorLog2,
  formatName,
  type IntSpec,
  intParams,
  intQuantizeValue,
  type MxElement,
  type MxSpec,
  miniFloatCast,
  miniFloatEncode,
  mxElementInfo,
  mxQuantizeValue,
  mxSharedExponent,
  nvfp4GlobalScale,
  packCodes,
  parseFormat,
  pow2,
  roundHalfAway,
  roundHalfEven,
  unpackCodes,
} from '../src/formats/index.ts';
import { rng } from './helpers.ts';

const f32 = Math.fround;
const NaN_ = Number.NaN;
const INF = Number.POSITIVE_INFINITY;

/** Element-wise Object.is: tells -0 from +0 and accepts NaN == NaN. */
function same(actual: ArrayLike<number>, expected: ArrayLike<number>, what = ''): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(actual[i], expected[i]))
      assert.fail(`${what}[${i}]: got ${fmt(actual[i])}, expected ${fmt(expected[i])}`);
  }
}
const fmt = (v: number) => (Object.is(v, -0) ? '-0' : String(v));

function throwsUser(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof UserError, `expected a UserError, got ${e}`);
    assert.ok(!e.message.includes('\n'), 'one-line message');
    for (const f of fragments) assert.ok(e.message.includes(f), `'${e.message}' lacks '${f}'`);
    return true;
  });
}

const int = (bits: number, symmetric: boolean, group?: number, clip?: number): IntSpec => ({
  kind: 'int',
  bits,
  symmetric,
  granularity: group === undefined ? 'row' : 'group',
  ...(group === undefined ? {} : { group }),
  ...(clip === undefined ? {} : { clip }),
});
const mx = (element: MxElement, block: number, rounding: 'nearest' | 'even' = 'nearest'): MxSpec => ({
  kind: 'mx',
  element,
  block,
  rounding,
});
/** fakeQuant of one row */
const fq = (x: number[], spec: FormatSpec, rows = 1) =>
  fakeQuantRows(new Float32Array(x), rows, x.length / rows, spec);

describe('rounding helpers', () => {
  test('roundHalfEven is torch.round: ties to even, sign of zero kept', () => {
    const x = [0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 0.49999999999999994, -0.4, 2 ** 52 - 0.5, 7.25];
    same(x.map(roundHalfEven), [0, 2, 2, 4, -0, -2, -2, 0, -0, 2 ** 52, 7], 'roundHalfEven');
    same([NaN_, INF, -INF].map(roundHalfEven), [NaN_, INF, -INF], 'non-finite');
  });

  test('roundHalfAway is microxcaling nearest: ties away from zero', () => {
    const x = [0.5, 1.5, 2.5, -0.5, -2.5, 0.49999999999999994, -0.4, 2.4999999999999996];
    same(x.map(roundHalfAway), [1, 2, 3, -1, -3, 0, -0, 2], 'roundHalfAway');
  });

  test('floorLog2 is exact where Math.log2 rounds up', () => {
    const below = 2 ** 30 * (1 - 2 ** -53); // log2 = 30 - 1.6e-16 rounds to 30
    assert.equal(Math.floor(Math.log2(below)), 30, 'premise: Math.log2 rounds up');
    same(
      [1, 0.75, below, 448, 2 ** -1022, 2 ** -1074, 3 * 2 ** -1070, 2 ** 1023].map(floorLog2),
      [0, -1, 29, 8, -1022, -1074, -1069, 1023],
      'floorLog2',
    );
    same([pow2(-1022), pow2(0), pow2(127), pow2(-127)], [2 ** -1022, 1, 2 ** 127, 2 ** -127], 'pow2');
  });
});

describe('mini floats (element formats)', () => {
  /** All non-negative finite values of a format, written out from its definition. */
  test('E2M1 / E2M3 / E3M2 value tables', () => {
    same(Array.from(E2M1.values.subarray(0, 8)), [0, 0.5, 1, 1.5, 2, 3, 4, 6], 'E2M1');
    same(Array.from(E2M1.values.subarray(8)), [-0, -0.5, -1, -1.5, -2, -3, -4, -6], 'E2M1 negative');
    // E2M3, bias 1: subnormals m/8; field 1: 1 + m/8; field 2: 2 + m/4; field 3: 4 + m/2
    const e2m3: number[] = [];
    for (let m = 0; m < 8; m++) e2m3.push(m / 8);
    for (let m = 0; m < 8; m++) e2m3.push(1 + m / 8);
    for (let m = 0; m < 8; m++) e2m3.push(2 + m / 4);
    for (let m = 0; m < 8; m++) e2m3.push(4 + m / 2);
    same(Array.from(E2M3.values.subarray(0, 32)), e2m3, 'E2M3');
    assert.equal(E2M3.values[31], 7.5);
    // E3M2, bias 3: subnormals m/16, then 2^(f-3) (1 + m/4) for fields 1..7 (28 at the top)
    same(Array.from(E3M2.values.subarray(0, 8)), [0, 1 / 16, 2 / 16, 3 / 16, 0.25, 0.3125, 0.375, 0.4375]);
    same([E3M2.values[28], E3M2.values[31]], [16, 28], 'E3M2 top');
  });

  test('FP8 patterns: maxima, subnormals, NaN / Inf codes', () => {
    same(
      [E4M3.values[0x7e], E4M3.values[0x01], E4M3.values[0x08], E4M3.values[0x38]],
      [448, 2 ** -9, 2 ** -6, 1],
    );
    assert.ok(Number.isNaN(E4M3.values[0x7f]) && Number.isNaN(E4M3.values[0xff]));
    same(
      [E5M2.values[0x7b], E5M2.values[0x01], E5M2.values[0x04], E5M2.values[0x3c]],
      [57344, 2 ** -16, 2 ** -14, 1],
    );
    same([E5M2.values[0x7c], E5M2.values[0xfc]], [INF, -INF], 'E5M2 Inf');
    assert.ok(Number.isNaN(E5M2.values[0x7d]));
    same([E4M3.maxCode, E5M2.maxCode, E3M2.maxCode, E2M3.maxCode, E2M1.maxCode], [0x7e, 0x7b, 31, 31, 7]);
  });

  test('E4M3 cast: ties to even, subnormal ties, saturation, signs', () => {
    const x = [
      1.0625, // halfway 1 (m=0) / 1.125 (m=1) -> 1
      1.1875, // halfway 1.125 (m=1) / 1.25 (m=2) -> 1.25
      2 ** -10, // halfway 0 / 2^-9 -> 0
      3 * 2 ** -10, // halfway 2^-9 (m=1) / 2^-8 (m=2) -> 2^-8
      7.5 * 2 ** -9, // halfway largest subnormal 7*2^-9 / smallest normal 2^-6 -> 2^-6
      464, // halfway 448 / (480 = NaN pattern): saturates
      1e6,
      INF,
      -INF,
      -(2 ** -12), // tiny negative -> -0
      -0,
      NaN_,
    ];
    same(x.map(castE4M3), [1, 1.25, 0, 2 ** -8, 2 ** -6, 448, 448, 448, -448, -0, -0, NaN_], 'castE4M3');
    same(
      [1, 1.25, 0.5, 448, -448, 2 ** -6, 7.5 * 2 ** -9, -0, NaN_].map(e4m3Code),
      [0x38, 0x3a, 0x30, 0x7e, 0xfe, 0x08, 0x08, 0x80, 0x7f],
      'e4m3Code',
    );
    // ties away from zero where asked (microxcaling 'nearest')
    same(
      [1.0625, 2 ** -10, -1.0625].map((v) => miniFloatCast(v, E4M3, true)),
      [1.125, 2 ** -9, -1.125],
      'away',
    );
  });

  test('E5M2 cast: ties, subnormals, saturation (no Inf produced)', () => {
    const x = [1.125, 1.375, 2 ** -17, 3 * 2 ** -17, 61440, INF, -1e9];
    // 1.125: halfway 1 (m=0) / 1.25 (m=1) -> 1; 1.375: halfway 1.25 (m=1) / 1.5 (m=2) -> 1.5
    // 2^-17: halfway 0 / 2^-16 -> 0; 3*2^-17: halfway 2^-16 (m=1) / 2^-15 (m=2) -> 2^-15
    // 61440: halfway 57344 / 65536 (Inf) -> saturates to 57344
    same(x.map(castE5M2), [1, 1.5, 0, 2 ** -15, 57344, 57344, -57344], 'castE5M2');
    same([1.25, 57344, INF, NaN_].map(e5m2Code), [0x3d, 0x7b, 0x7b, 0x7f], 'e5m2Code');
  });

  test('formats without NaN report -1 for NaN codes', () => {
    assert.equal(miniFloatEncode(NaN_, E2M1, false), -1);
    assert.ok(Number.isNaN(miniFloatCast(NaN_, E2M1)));
  });
});

describe('INT asymmetric (AutoAWQ pseudo_quantize_tensor)', () => {
  test('ties round half to even in q and in the zero point', () => {
    // int2 (qmax 3), group [-0.5, 0.5, 1.5, 2.5]: range 3, scale 1,
    // zero = -round(-0.5) = -(-0) = 0 (half-up would give 1), q = round(x) + 0:
    // round(-0.5) = -0 -> 0, round(0.5) = 0, round(1.5) = 2, round(2.5) = 2 -> values [0, 0, 2, 2]
    const spec = int(2, false, 4);
    same(fq([-0.5, 0.5, 1.5, 2.5], spec), [0, 0, 2, 2]);
    const e = encode(new Float32Array([-0.5, 0.5, 1.5, 2.5]), 1, 4, spec);
    same(e.codes, [0, 0, 2, 2], 'codes');
    same(e.scales, [1], 'scale');
    same(e.zeros ?? [], [0], 'zero');
    // int3 (qmax 7), [-1, -0.25, 0.5, 2.5]: range 3.5, scale 0.5, zero = -round(-2) = 2,
    // q = round([-2, -0.5, 1, 5]) + 2 = [0, 2, 3, 7] -> (q - 2) * 0.5 = [-1, 0, 0.5, 2.5]
    same(fq([-1, -0.25, 0.5, 2.5], int(3, false, 4)), [-1, 0, 0.5, 2.5]);
  });

  test('zero is not forced into the range: positive-only and negative-only groups clip', () => {
    // int2, [1, 4]: range 3, scale 1, zero = clamp(-1, 0, 3) = 0, q = [1, 4 -> 3] -> [1, 3]
    // int2, [-5, -2]: range 3, scale 1, zero = clamp(5, 0, 3) = 3, q = [-5+3 -> 0, -2+3 = 1]
    //   -> (q - 3) * 1 = [-3, -2]: everything below -(max - min) = -3 saturates there
    same(fq([1, 4, -5, -2], int(2, false, 2)), [1, 3, -3, -2]);
    // GPTQ's include-zero range instead: [0, 4] -> scale s4 = f32(4 * f32(1/3)) (scales are range
    // times the f32 reciprocal of qmax, as PyTorch on CUDA), zero 0, q = [round(0.75) = 1, 3]
    // -> [s4, f32(3 * s4)]; [-5, 0] -> scale s5 = f32(5 * f32(1/3)), zero = -round(-3) = 3,
    // q = [0, round(-1.2) + 3 = 2] -> [f32(-3 * s5), -s5]
    const s4 = f32(4 * f32(1 / 3));
    const s5 = f32(5 * f32(1 / 3));
    const out = fakeQuantInt(new Float32Array([1, 4, -5, -2]), 2, 2, int(2, false, 2), { includeZero: true });
    same(out, [s4, f32(3 * s4), f32(-3 * s5), -s5], 'includeZero');
  });

  test('all-equal, all-zero and single-valued groups use the 1e-5 range floor', () => {
    // [0.3 x4] int4: range 0 -> f32(1e-5), scale = f32(f32(1e-5) * f32(1/15)), zero = clamp(-big, 0, 15)
    // = 0, q = clamp(big, 0, 15) = 15 -> 15 * scale (~1e-5); negative: zero 15, q 0 -> -15 * scale
    const s = f32(f32(1e-5) * f32(1 / 15));
    const v = f32(15 * s);
    assert.ok(Math.abs(v - 1e-5) < 1e-12, 'comes back as ~1e-5');
    const x = [0.3, 0.3, 0.3, 0.3, -2, -2, -2, -2, 0, 0, 0, 0];
    same(fq(x, int(4, false, 4)), [v, v, v, v, -v, -v, -v, -v, 0, 0, 0, 0]);
    const e = encode(new Float32Array([0, 0, 0, 0]), 1, 4, int(4, false, 4));
    same(e.scales, [s], 'all-zero scale');
    same(e.zeros ?? [], [0], 'all-zero zero point');
    same(e.codes, [0, 0, 0, 0], 'all-zero codes');
    // GPTQ maps an all-zero group to the range [-1, 1]: scale f32(2/15) = 0.13333334 (rounded up),
    // zero = round(1 / scale) = round(7.4999997) = 7 (not a tie)
    const g = intParams(new Float32Array(4), 4, false, { includeZero: true });
    same([g.scale, g.zero], [f32(2 / 15), 7], 'includeZero all-zero');
    same(fakeQuantInt(new Float32Array(4), 1, 4, int(4, false, 4), { includeZero: true }), [0, 0, 0, 0]);
  });

  test('per-group, per-row and per-tensor scales on the same matrix', () => {
    // 2 x 4, int4 (qmax 15)
    const x = [0, 15, 7.5, 8.5, 0, 30, 1, 3];
    // tensor: min 0, max 30, scale 2, zero 0: q = round([0, 7.5, 3.75, 4.25, 0, 15, 0.5, 1.5])
    //   = [0, 8, 4, 4, 0, 15, 0, 2] -> x2
    same(
      fq(x, { kind: 'int', bits: 4, symmetric: false, granularity: 'tensor' }, 2),
      [0, 16, 8, 8, 0, 30, 0, 4],
    );
    // row: row 0 scale 1 -> [0, 15, 8, 8]; row 1 scale 2 -> [0, 30, 0, 4]
    same(fq(x, int(4, false), 2), [0, 15, 8, 8, 0, 30, 0, 4]);
    // groups of 2: [0,15] s=1 z=0 -> [0,15]; [0,30] s=2 -> [0,30];
    // [7.5,8.5]: s = f32(1/15), zero = clamp(-112, 0, 15) = 0 so the grid is [0, 15 s]:
    //   q = clamp(112 | 127, 0, 15) = 15 -> f32(15 * s) = 1 for both (positive-only group clipped);
    // [1,3]: s2 = f32(2/15) (rounded up), zero = clamp(-7, 0, 15) = 0,
    //   f32(1 / s2) = 7.4999995 -> 7 (not a tie), 3 / s2 -> 22 -> 15: [7 s2, 15 s2]
    const s2 = f32(2 / 15);
    same(fq(x, int(4, false, 2), 2), [0, 15, 1, 1, 0, 30, f32(7 * s2), f32(15 * s2)]);
    const e = encode(new Float32Array(x), 2, 4, int(4, false, 2));
    same(e.scales, [1, f32(1 / 15), 2, s2], 'group scales');
    assert.equal(e.block, 2);
  });

  test('clip ratio shrinks min and max', () => {
    // int2, clip 0.5, [-2, 4]: min -1, max 2, range 3, scale 1, zero 1,
    // q = clamp([-2+1, 4+1], 0, 3) = [0, 3] -> [-1, 2]
    same(fq([-2, 4], int(2, false, 2, 0.5)), [-1, 2]);
    same(fq([-2, 4], parseFormat('int2-g2-clip0.5')), [-1, 2], 'by name');
    // option overrides the spec
    same(fakeQuantInt(new Float32Array([-2, 4]), 1, 2, int(2, false, 2), { clip: 0.5 }), [-1, 2]);
  });

  test('NaN stays NaN, Infinity saturates, neither enters the range', () => {
    // group 1 [NaN, 0, 7, 15]: finite range [0, 15], scale 1 -> [NaN, 0, 7, 15]
    // group 2 [-Inf, -1, 14, Inf]: range [-1, 14], scale 1, zero 1: -Inf -> q 0 -> -1, Inf -> q 15 -> 14
    same(fq([NaN_, 0, 7, 15, -INF, -1, 14, INF], int(4, false, 4)), [NaN_, 0, 7, 15, -1, -1, 14, 14]);
    throwsUser(
      () => encode(new Float32Array([1, 2, NaN_, 4]), 2, 2, int(4, false, 2)),
      'NaN',
      'row 1, column 0',
    );
  });

  test('zero results are +0', () => {
    // int4 [-0, -0.4, 0, 14.6]: range f32(14.6 + 0.4) = 15, scale 1, zero = -round(-0.4) = 0:
    // round(-0.4) = -0 -> q 0 -> +0, -0 -> +0, 14.6 -> 15
    same(fq([-0, -0.4, 0, 14.6], int(4, false, 4)), [0, 0, 0, 15]);
  });
});

describe('INT symmetric (AutoAWQ zero_point=False, SmoothQuant absmax)', () => {
  test('ties to even, offset-binary codes', () => {
    // int4 sym: amax 7, scale 7/7 = 1, q = round([-7, 3.5, 0.5, 2.5]) = [-7, 4, 0, 2]
    same(fq([-7, 3.5, 0.5, 2.5], int(4, true, 4)), [-7, 4, 0, 2]);
    const e = encode(new Float32Array([-7, 3.5, 0.5, 2.5]), 1, 4, int(4, true, 4));
    same(e.codes, [1, 12, 8, 10], 'codes q + 8');
    assert.equal(e.zeros, undefined);
  });

  test('SmoothQuant int8 per-row: scale amax / 127', () => {
    // row [127, -63.5, 0.5, 1.5]: scale 1 -> [127, -64, 0, 2]; row [254, 1, 3, -5]: scale 2,
    // q = round([127, 0.5, 1.5, -2.5]) = [127, 0, 2, -2] -> [254, 0, 4, -4]
    const spec = parseFormat('int8-row-sym');
    same(fq([127, -63.5, 0.5, 1.5, 254, 1, 3, -5], spec, 2), [127, -64, 0, 2, 254, 0, 4, -4]);
    same(encode(new Float32Array([127, -63.5, 0.5, 1.5]), 1, 4, spec).codes, [255, 64, 128, 130]);
    // non-power-of-two scale: amax 1 -> scale f32(1/127), f32(0.5 / scale) = 63.5 -> 64 (even)
    const s = f32(1 / 127);
    same(fq([1, 0.5, -0.25, 0], spec), [f32(127 * s), f32(64 * s), f32(-32 * s), 0]);
  });

  test('clipping makes -2^(b-1) reachable; Inf saturates to the grid ends', () => {
    // int4 sym clip 0.5: amax 14 -> 7, scale 1: q = clamp([-14, 7, 3, -1], -8, 7) = [-8, 7, 3, -1]
    same(fq([-14, 7, 3, -1], int(4, true, 4, 0.5)), [-8, 7, 3, -1]);
    // [Inf, -Inf, 7, 1]: amax over finite = 7, scale 1 -> [7, -8, 7, 1]
    same(fq([INF, -INF, 7, 1], int(4, true, 4)), [7, -8, 7, 1]);
  });

  test('zeros: all-zero group gives +0, scale f32(1e-5)/qmax; -0 gives +0', () => {
    same(fq([0, -0, 0, -0], int(3, true, 4)), [0, 0, 0, 0]);
    same(encode(new Float32Array(4), 1, 4, int(3, true, 4)).scales, [f32(f32(1e-5) / 3)]);
    same(fq([-0.4, -0, 7, 0], int(4, true, 4)), [0, 0, 7, 0]);
  });
});

describe('INT spec validation', () => {
  test('group must divide the row; bits 2..8; clip in (0, 1]', () => {
    throwsUser(() => fq([1, 2, 3, 4, 5, 6, 7, 8], int(4, false, 3)), 'group size 3', 'does not divide', '8');
    throwsUser(() => fq([1, 2], int(4, false, 0)), 'group size');
    throwsUser(() => encode(new Float32Array(8), 1, 8, int(4, true, 5)), 'does not divide');
    throwsUser(() => fq([1, 2], int(1, false, 2)), 'bits');
    throwsUser(() => fq([1, 2], int(9, false, 2)), 'bits');
    throwsUser(() => fq([1, 2], int(4, false, 2, 0)), 'clip');
    throwsUser(() => fq([1, 2], int(4, false, 2, 1.5)), 'clip');
    throwsUser(() => fakeQuantRows(new Float32Array(3), 2, 2, int(4, false)), '3 values', '2 x 2');
  });
});

describe('MXINT', () => {
  test('MXINT8: e = floor(log2 amax), 6 fraction bits, ties in both modes', () => {
    // amax 1 -> e = 0, step 2^-6. 2^-7 = 0.5 step, 5*2^-7 = 2.5 steps, -5*2^-7 = -2.5 steps
    const x = [1, 2 ** -7, 5 * 2 ** -7, -5 * 2 ** -7];
    same(fq(x, mx('int8', 4)), [1, 2 ** -6, 3 * 2 ** -6, -3 * 2 ** -6], 'nearest (away)');
    same(fq(x, mx('int8', 4, 'even')), [1, 0, 2 * 2 ** -6, -2 * 2 ** -6], 'even');
    const e = encode(new Float32Array(x), 1, 4, mx('int8', 4));
    same(e.exponents ?? [], [0], 'exponent');
    // two's complement codes: 64, 1, 3, -3 & 0xff = 253
    same(e.codes, [64, 1, 3, 253], 'codes');
  });

  test('MXINT8 saturates at 127/64 * 2^e (sign-magnitude: -127 at most)', () => {
    // 2 - 2^-10: e = 0, 127.9375 steps -> 128 -> clamp 127; negative side also 127 steps
    same(fq([2 - 2 ** -10, -(2 - 2 ** -10), 0.5, 0], mx('int8', 4)), [127 / 64, -127 / 64, 0.5, 0]);
  });

  test('MXINT4 (max 1.75), scaled block, negative-only block, zeros', () => {
    // [3, -1.1, 0.375, -0.125]: amax 3 -> e = 1, step 2^(1-2) = 0.5:
    // [6, -2.2, 0.75, -0.25] steps -> [6, -2, 1, -0] -> [3, -1, 0.5, +0]
    same(fq([3, -1.1, 0.375, -0.125], mx('int4', 4)), [3, -1, 0.5, 0]);
    // [3.9, 0.25, 0.75, 1.25]: e = 1, steps [7.8 -> 8 -> 7, 0.5, 1.5, 2.5]
    // nearest [7, 1, 2, 3] -> [3.5, 0.5, 1, 1.5]; even [7, 0, 2, 2] -> [3.5, 0, 1, 1]
    same(fq([3.9, 0.25, 0.75, 1.25], mx('int4', 4)), [3.5, 0.5, 1, 1.5], 'nearest');
    same(fq([3.9, 0.25, 0.75, 1.25], mx('int4', 4, 'even')), [3.5, 0, 1, 1], 'even');
    // negative-only [-1, -0.5, -0.25, -2]: amax 2 -> e = 1, steps [-2, -1, -0.5, -4]
    // nearest -> [-1, -0.5, -0.5, -2]; even -> [-1, -0.5, +0, -2]
    same(fq([-1, -0.5, -0.25, -2], mx('int4', 4)), [-1, -0.5, -0.5, -2], 'negative nearest');
    same(fq([-1, -0.5, -0.25, -2], mx('int4', 4, 'even')), [-1, -0.5, 0, -2], 'negative even');
  });

  test('MXINT2 is {-1, 0, 1} * 2^e', () => {
    // amax 1, e = 0: 0.5 / -0.5 are ties; 0.25 -> 0
    same(fq([1, 0.5, -0.5, 0.25], mx('int2', 4)), [1, 1, -1, 0], 'nearest');
    same(fq([1, 0.5, -0.5, 0.25], mx('int2', 4, 'even')), [1, 0, 0, 0], 'even');
    // all-equal block [3, 3, 3, 3]: e = 1, 3/2 = 1.5 -> 2 -> clamp 1 -> 2
    same(fq([3, 3, 3, 3], mx('int2', 4)), [2, 2, 2, 2], 'all-equal');
  });

  test("decode reads MXINT codes as two's complement (0x80 = -2, which encode never writes)", () => {
    const e = encode(new Float32Array([1, -1, 0.5, -0.015625]), 1, 4, mx('int8', 4));
    same(e.codes, [64, 192, 32, 255], 'codes');
    same(decode({ ...e, codes: new Uint8Array([0x80, 0x7f, 0x81, 0xff]) }), [
      -2,
      127 / 64,
      -127 / 64,
      -1 / 64,
    ]);
  });

  test('all-zero block: exponent -126 (microxcaling adds 2^-126), +0 results', () => {
    const e = encode(new Float32Array(8), 1, 8, mx('int8', 4));
    same(e.exponents ?? [], [-126, -126]);
    same(decode(e), new Float32Array(8));
    same(fq([0, -0, 0, -0], mx('int4', 4)), [0, 0, 0, 0], '-0 -> +0');
  });

  test('shared exponent clamps at -127 for tiny (f32-subnormal) blocks and reaches 127', () => {
    // amax 2^-130: e = -130 -> -127, step 2^-133. 2^-135 = 0.25 steps -> 0;
    // 5*2^-134 = 2.5 steps -> nearest 3 (3*2^-133), even 2 (2^-132)
    const x = [2 ** -130, 2 ** -135, 5 * 2 ** -134, 0];
    same(fq(x, mx('int8', 4)), [2 ** -130, 0, 3 * 2 ** -133, 0], 'nearest');
    same(fq(x, mx('int8', 4, 'even')), [2 ** -130, 0, 2 ** -132, 0], 'even');
    same(encode(new Float32Array(x), 1, 4, mx('int8', 4)).exponents ?? [], [-127]);
    // 1.5 * 2^127 (f32): e = 127, 1.5 = 96 steps exactly
    const big = [1.5 * 2 ** 127, 2 ** 120, 0, 0];
    // 2^120 = 0.5 step of 2^121 -> 2^121 (nearest)
    same(fq(big, mx('int8', 4)), [1.5 * 2 ** 127, 2 ** 121, 0, 0], 'top');
    same(encode(new Float32Array(big), 1, 4, mx('int8', 4)).exponents ?? [], [127]);
  });

  test('NaN / Inf: block exponent from finite values, Inf saturates, NaN per element', () => {
    // [Inf, -Inf, 1, NaN]: amax 1 -> e = 0: [127/64, -127/64, 1, NaN]
    same(fq([INF, -INF, 1, NaN_], mx('int8', 4)), [127 / 64, -127 / 64, 1, NaN_]);
    throwsUser(() => encode(new Float32Array([1, NaN_, 0, 0]), 1, 4, mx('int8', 4)), 'NaN', 'column 1');
  });
});

describe('MXFP', () => {
  test('MXFP4 E2M1: ties in both modes, subnormal ties, signed zero', () => {
    // amax 6 -> e = 2 - 2 = 0. 2.5: 2 (m=0) / 3 (m=1); -0.25: -0 / -0.5; 5: 4 (m=0) / 6 (m=1)
    const x = [6, 2.5, -0.25, 5];
    same(fq(x, mx('fp4_e2m1', 4)), [6, 3, -0.5, 6], 'nearest');
    same(fq(x, mx('fp4_e2m1', 4, 'even')), [6, 2, -0, 4], 'even');
    // 3.5: 3 (m=1) / 4 (next binade, m=0) -> 4 both; 1.25: 1 / 1.5; 0.75: 0.5 (sub, m=1) / 1 (m=0)
    same(fq([7, 3.5, 1.25, 0.75], mx('fp4_e2m1', 4)), [6, 4, 1.5, 1], 'nearest; 7 saturates to 6');
    same(fq([7, 3.5, 1.25, 0.75], mx('fp4_e2m1', 4, 'even')), [6, 4, 1, 1], 'even');
  });

  test('MXFP4 scaled block and E2M1 codes', () => {
    // amax 96 -> floor(log2 96) = 6, e = 4: x / 16 = [6, 2.5, -0.1875, 0]
    // -> [6, 3 | 2, -0 (below 0.25), 0] * 16
    const x = [96, 40, -3, 0];
    same(fq(x, mx('fp4_e2m1', 4)), [96, 48, -0, 0], 'nearest');
    same(fq(x, mx('fp4_e2m1', 4, 'even')), [96, 32, -0, 0], 'even');
    const e = encode(new Float32Array(x), 1, 4, mx('fp4_e2m1', 4));
    same(e.exponents ?? [], [4]);
    same(e.scales, [16]);
    same(e.codes, [0b0111, 0b0101, 0b1000, 0b0000], 'codes');
  });

  test('MXFP4 all-equal and negative-only blocks', () => {
    // [5, 5, 5, 5]: amax 5 -> e = 2 - 2 = 0; 5 is halfway 4 (m=0) / 6 (m=1)
    same(fq([5, 5, 5, 5], mx('fp4_e2m1', 4)), [6, 6, 6, 6], 'all-equal nearest');
    same(fq([5, 5, 5, 5], mx('fp4_e2m1', 4, 'even')), [4, 4, 4, 4], 'all-equal even');
    // [-5, -1, -0.25, -3]: e = 0 -> nearest [-6, -1, -0.5, -3], even [-4, -1, -0, -3]
    same(fq([-5, -1, -0.25, -3], mx('fp4_e2m1', 4)), [-6, -1, -0.5, -3], 'negative nearest');
    same(fq([-5, -1, -0.25, -3], mx('fp4_e2m1', 4, 'even')), [-4, -1, -0, -3], 'negative even');
  });

  test('MXFP6 E3M2 (emax 4, max 28) and E2M3 (emax 2, max 7.5)', () => {
    // E3M2: amax 31 -> e = 4 - 4 = 0. 31 -> 28; 1.125: 1 / 1.25; 0.03125: 0 / 0.0625 (subnormal);
    // 0.09375 = 1.5 * 2^-4: 0.0625 (m=1) / 0.125 (m=2) -> 0.125 both
    const a = [31, 1.125, 0.03125, -0.09375];
    same(fq(a, mx('fp6_e3m2', 4)), [28, 1.25, 0.0625, -0.125], 'E3M2 nearest');
    same(fq(a, mx('fp6_e3m2', 4, 'even')), [28, 1, 0, -0.125], 'E3M2 even');
    // E2M3: amax 7.9 -> e = 0. 7.9 -> 7.5; 4.25: 4 / 4.5; 0.0625: 0 / 0.125; -0.1875: -0.125 / -0.25 -> -0.25
    const b = [7.9, 4.25, 0.0625, -0.1875];
    same(fq(b, mx('fp6_e2m3', 4)), [7.5, 4.5, 0.125, -0.25], 'E2M3 nearest');
    same(fq(b, mx('fp6_e2m3', 4, 'even')), [7.5, 4, 0, -0.25], 'E2M3 even');
  });

  test('MXFP8 E4M3 (emax 8): amax in [448, 512) saturates to 448', () => {
    // amax 500 -> floor(log2) = 8, e = 0: 500 -> 448; 1.0625: 1 / 1.125; 2^-10: 0 / 2^-9
    const x = [500, 1.0625, 2 ** -10, -(2 ** -12)];
    same(fq(x, mx('fp8_e4m3', 4)), [448, 1.125, 2 ** -9, -0], 'nearest');
    same(fq(x, mx('fp8_e4m3', 4, 'even')), [448, 1, 0, -0], 'even');
  });

  test('MXFP8 E5M2 (emax 15)', () => {
    // amax 1.9 -> e = 0 - 15: element 1.9 * 2^15 = 62259.2 -> 57344 -> 1.75
    // 1.125 -> 36864 = 4.5 * 8192: 32768 (m=0) / 40960 (m=1) -> 1.25 | 1
    // 2^-32 -> 2^-17 element: 0 / 2^-16 (smallest subnormal) -> 2^-31 | 0
    const x = [1.9, 1.125, 2 ** -32, -1];
    same(fq(x, mx('fp8_e5m2', 4)), [1.75, 1.25, 2 ** -31, -1], 'nearest');
    same(fq(x, mx('fp8_e5m2', 4, 'even')), [1.75, 1, 0, -1], 'even');
    same(encode(new Float32Array(x), 1, 4, mx('fp8_e5m2', 4)).exponents ?? [], [-15]);
  });

  test('all-zero blocks: exponent -126 - emax clamped to -127, zeros keep their sign', () => {
    for (const el of ['fp4_e2m1', 'fp6_e3m2', 'fp8_e4m3', 'fp8_e5m2'] as const) {
      const e = encode(new Float32Array([0, -0, 0, 0]), 1, 4, mx(el, 4));
      same(e.exponents ?? [], [-127], el);
      same(decode(e), [0, -0, 0, 0], el);
    }
  });

  test('NaN / Inf in MXFP blocks', () => {
    // MXFP4 [NaN, Inf, -Inf, 3]: amax 3 -> e = 1 - 2 = -1: Inf -> 6 * 0.5 = 3, 3 -> 6 * 0.5
    same(fq([NaN_, INF, -INF, 3], mx('fp4_e2m1', 4)), [NaN_, 3, -3, 3]);
    // a block of only non-finite values: amax 0 -> e = -127 (E5M2: -126 - 15 -> clamp)
    same(fq([INF, -INF, NaN_, 0], mx('fp8_e5m2', 4)), [57344 * 2 ** -127, -57344 * 2 ** -127, NaN_, 0]);
    throwsUser(() => encode(new Float32Array([NaN_, 0, 0, 0]), 1, 4, mx('fp4_e2m1', 4)), 'NaN', 'as MX');
  });

  test('block size: default 32, any divisor, error otherwise', () => {
    // 64 columns, default block 32: two exponents
    const x = new Float32Array(64);
    x[3] = 1;
    x[40] = 8;
    same(encode(x, 1, 64, parseFormat('mxint8')).exponents ?? [], [0, 3]);
    throwsUser(() => fq([1, 2, 3, 4, 5, 6], mx('int8', 4)), 'block size 4', 'does not divide', '6');
    throwsUser(() => fq([1, 2], mx('int8', 0)), 'block size');
  });

  test('shared exponent function and element table', () => {
    same(
      [mxSharedExponent(448, 8), mxSharedExponent(255.99, 8), mxSharedExponent(0, 0), mxSharedExponent(0, 2)],
      [0, -1, -126, -127],
    );
    const t = (
      ['int8', 'int4', 'int2', 'fp8_e4m3', 'fp8_e5m2', 'fp6_e3m2', 'fp6_e2m3', 'fp4_e2m1'] as const
    ).map((el) => {
      const i = mxElementInfo(el);
      return [i.bits, i.emax, i.maxNorm];
    });
    assert.deepEqual(t, [
      [8, 0, 127 / 64],
      [4, 0, 1.75],
      [2, 0, 1],
      [8, 8, 448],
      [8, 15, 57344],
      [6, 4, 28],
      [6, 2, 7.5],
      [4, 2, 6],
    ]);
  });
});

describe('FP8 with per-tensor / per-row scales', () => {
  test('E4M3 per tensor: scale amax / 448', () => {
    // amax 896 -> scale 2: x / 2 = [448, -1.5, 1.0625, 1.5 * 2^-9]
    // -> [448, -1.5, 1 (tie to even), 2^-8 (subnormal tie 2^-9 / 2^-8 -> even m=2)] * 2
    const spec: FormatSpec = { kind: 'fp8', element: 'e4m3', granularity: 'tensor' };
    same(fq([896, -3, 2.125, 3 * 2 ** -9], spec), [896, -3, 2, 2 ** -7]);
    const e = encode(new Float32Array([896, -3, 2.125, 3 * 2 ** -9]), 1, 4, spec);
    same(e.scales, [2]);
    same(e.codes, [0x7e, 0xbc, 0x38, 0x02], 'codes');
  });

  test('E4M3 per row; non-power-of-two scale; all-zero row gets scale 1', () => {
    // row 0: amax 448 -> scale 1; row 1: amax 100 -> scale f32(100/448), x / scale rounded to f32
    // then cast; row 2 all zero -> scale 1, zeros (sign kept)
    const x = [448, 300, -1, 0, 100, 50, -7, 1, 0, -0, 0, 0];
    const spec: FormatSpec = { kind: 'fp8', element: 'e4m3', granularity: 'row' };
    const s = f32(100 / 448);
    // 100 / s = 448.00000..., 50 / s -> 224, 7 / s = 31.36 -> 32, 1 / s = 4.48 -> 4.5
    same(fq(x, spec, 3), [
      448,
      288,
      -1,
      0,
      f32(448 * s),
      f32(224 * s),
      f32(-32 * s),
      f32(4.5 * s),
      0,
      -0,
      0,
      0,
    ]);
    same(encode(new Float32Array(x), 3, 4, spec).scales, [1, s, 1]);
  });

  test('x / scale is rounded to f32 before the cast (as torch divides f32 tensors)', () => {
    // amax 100 -> s = f32(100/448). v = f32(34 s) = 7.589285850524902: v / s = 34.0000009 in
    // float64 but exactly 34 in f32, a tie between 32 (m=0) and 36 (m=1) -> 32 (even);
    // 9.375 / s = 42.0000004 -> f32 42, tie 40 (m=2) / 44 (m=3) -> 40
    const s = f32(100 / 448);
    const spec: FormatSpec = { kind: 'fp8', element: 'e4m3', granularity: 'tensor' };
    assert.ok(7.589285850524902 / s !== 34 && f32(7.589285850524902 / s) === 34, 'premise');
    same(fq([100, 7.589285850524902, 9.375, 0], spec), [f32(448 * s), f32(32 * s), f32(40 * s), 0]);
  });

  test('E5M2 per tensor, Inf saturates, NaN stays', () => {
    // finite amax 57344 * 4 -> scale 4: [Inf -> 57344 * 4, 6 -> 1.5 * 4, 4.5 -> 1.125: 1 (even) -> 4]
    const spec: FormatSpec = { kind: 'fp8', element: 'e5m2', granularity: 'tensor' };
    same(fq([INF, 229376, 6, 4.5, NaN_, -INF], spec, 2), [229376, 229376, 6, 4, NaN_, -229376]);
    throwsUser(() => encode(new Float32Array([NaN_, 1]), 1, 2, spec), 'NaN', 'fp8');
  });
});

describe('NVFP4', () => {
  const row = (head: number[]) => [...head, ...new Array(16 - head.length).fill(0)];

  test('global scale 1, E4M3 block scales, E2M1 ties to even', () => {
    // tensor amax 2688 -> global = 2688 / (6 * 448) = 1.
    // block 0 amax 2688: sB = e4m3(2688 / 6) = 448, d = 448: [6, 2.5 -> 2, -0.5, 1.75 -> 2] * 448
    // block 1 amax 6: sB = 1: [6, 2.5 -> 2, 5 -> 4, 0.25 -> 0, 0.75 -> 1, 3.5 -> 4, -1.25 -> -1, -0.1 -> -0]
    // block 2 amax 7: 7/6 = 1.1666 -> e4m3 1.125 (grid 0.125), d = 1.125: 7 / 1.125 = 6.2 -> 6 -> 6.75
    // block 3 all zero: sB = 1 (E4M3 0x38), zeros
    const x = [
      ...row([2688, 1120, -224, 784]),
      ...row([6, 2.5, 5, 0.25, 0.75, 3.5, -1.25, -0.1]),
      ...row([7, 1.125]),
      ...row([]),
    ];
    const expected = [
      ...row([2688, 896, -224, 896]),
      ...row([6, 2, 4, 0, 1, 4, -1, -0]),
      ...row([6.75, 1.125]),
      ...row([]),
    ];
    same(fq(x, { kind: 'nvfp4' }, 2), expected);
    const e = encode(new Float32Array(x), 2, 32, { kind: 'nvfp4' });
    assert.equal(e.globalScale, 1);
    same(e.scaleCodes ?? [], [0x7e, 0x38, 0x39, 0x38], 'block scale codes');
    same(e.scales, [448, 1, 1.125, 1], 'block scales');
    same(e.codes.subarray(16, 24), [0x7, 0x4, 0x6, 0x0, 0x2, 0x6, 0xa, 0x8], 'E2M1 codes');
  });

  test('global scale amax / 2688; all-zero tensor; cols must be a multiple of 16', () => {
    // amax 5376 -> global 2; block amax 5376 -> 5376 / 6 / 2 = 448, d = 896: 3 / 896 -> 0
    same(fq(row([5376, -2688, 3]), { kind: 'nvfp4' }), row([5376, -2688, 0]));
    assert.equal(nvfp4GlobalScale(5376), 2);
    assert.equal(nvfp4GlobalScale(0), 1);
    const z = encode(new Float32Array(16), 1, 16, { kind: 'nvfp4' });
    assert.equal(z.globalScale, 1);
    same(decode(z), new Float32Array(16));
    throwsUser(() => fq(new Array(24).fill(1), { kind: 'nvfp4' }), 'nvfp4', 'does not divide', '24');
  });

  test('block scale = e4m3(f32(f32(amax / 6) / global)), in that order (TensorRT-Model-Optimizer)', () => {
    // amax 1120 -> g = f32(1120 / 2688) = 0.41666666. Block 1 amax 31.25: f32(31.25 / 6) =
    // 5.2083335, / g -> f32 12.500001 -> E4M3 13 (0x55; grid 1 in [8, 16)). Dividing by 6 g
    // at once would give exactly 12.5, a tie, -> 12. d = f32(13 g); 31.25 / d = 5.77 -> 6.
    // Block 0: f32(1120 / 6) / g -> 448 -> d0 = f32(448 g), 1120 / d0 = 6.0000002 -> 6.
    const g = f32(1120 / 2688);
    const d0 = f32(448 * g);
    const d = f32(13 * g);
    const x = [...row([1120]), ...row([31.25])];
    same(fq(x, { kind: 'nvfp4' }), [...row([f32(6 * d0)]), ...row([f32(6 * d)])]);
    same(encode(new Float32Array(x), 1, 32, { kind: 'nvfp4' }).scaleCodes ?? [], [0x7e, 0x55]);
  });

  test('a tensor whose global scale would be f32-subnormal gets global 1 and flushes to zero', () => {
    // amax 1e-36: 1e-36 / 2688 = 3.7e-40 is subnormal -> global 1; block scale 1e-36 / 6
    // underflows E4M3 -> replaced by 1; every element is far below 0.25 -> +-0
    const x = row([1e-36, -5e-37]);
    assert.equal(nvfp4GlobalScale(1e-36), 1);
    same(fq(x, { kind: 'nvfp4' }), row([0, -0]));
  });

  test('NaN / Inf', () => {
    // finite amax 6 -> global f32(6/2688); block scale e4m3(1 / global) ~ 448, d ~ 6/6:
    // Inf -> 6 * d, -Inf -> -6 * d, 6 -> 6 * d
    const g = f32(6 / 2688);
    const d = f32(castE4M3(f32(f32(6 / 6) / g)) * g);
    same(fq(row([INF, -INF, 6, NaN_]), { kind: 'nvfp4' }), row([f32(6 * d), f32(-6 * d), f32(6 * d), NaN_]));
    throwsUser(() => encode(new Float32Array(row([NaN_])), 1, 16, { kind: 'nvfp4' }), 'NaN', 'nvfp4');
  });
});

// ---------------------------------------------------------------------------------------------
// Naive float64 reimplementations (from the formulas, not from the code under test)

/** round half to even via Math.round (half up) with a fix for odd results of exact ties */
function rne(t: number): number {
  const r = Math.round(t);
  return r - t === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
function rhaz(t: number): number {
  return Math.sign(t) * Math.floor(Math.abs(t) + 0.5);
}

function naiveInt(x: Float32Array, cols: number, spec: IntSpec): Float32Array {
  const g = spec.granularity === 'group' ? (spec.group as number) : cols;
  const out = new Float32Array(x.length);
  const c = f32(spec.clip ?? 1);
  const floor = f32(1e-5);
  for (let s = 0; s < x.length; s += g) {
    const grp = Array.from(x.subarray(s, s + g));
    const finite = grp.filter(Number.isFinite);
    let lo = finite.length ? Math.min(...finite) : 0;
    let hi = finite.length ? Math.max(...finite) : 0;
    let scale: number;
    let zero = 0;
    let qlo: number;
    let qhi: number;
    if (spec.symmetric) {
      qhi = 2 ** (spec.bits - 1) - 1;
      qlo = -qhi - 1;
      const amax = Math.max(floor, f32(Math.max(Math.abs(lo), Math.abs(hi)) * c));
      scale = f32(amax * f32(1 / qhi)); // PyTorch on CUDA: division by a number = times its f32 reciprocal
    } else {
      qlo = 0;
      qhi = 2 ** spec.bits - 1;
      lo = f32(lo * c);
      hi = f32(hi * c);
      scale = f32(Math.max(floor, f32(hi - lo)) * f32(1 / qhi));
      zero = Math.min(qhi, Math.max(0, -rne(f32(lo / scale))));
    }
    for (let i = 0; i < g; i++) {
      const v = grp[i];
      if (Number.isNaN(v)) {
        out[s + i] = NaN_;
        continue;
      }
      const q = Math.min(qhi, Math.max(qlo, rne(f32(v / scale)) + zero));
      out[s + i] = (q - zero) * scale + 0;
    }
  }
  return out;
}

/** non-negative finite values of an element format, ascending (index parity = mantissa parity) */
function gridOf(ebits: number, mbits: number, max: number): number[] {
  const bias = 2 ** (ebits - 1) - 1;
  const vals: number[] = [];
  for (let e = 0; e < 2 ** ebits; e++)
    for (let m = 0; m < 2 ** mbits; m++) {
      const v = e === 0 ? (m / 2 ** mbits) * 2 ** (1 - bias) : (1 + m / 2 ** mbits) * 2 ** (e - bias);
      if (v <= max) vals.push(v);
    }
  return vals;
}
const GRIDS: Record<string, { grid: number[]; emax: number }> = {
  fp8_e4m3: { grid: gridOf(4, 3, 448), emax: 8 },
  fp8_e5m2: { grid: gridOf(5, 2, 57344), emax: 15 },
  fp6_e3m2: { grid: gridOf(3, 2, 28), emax: 4 },
  fp6_e2m3: { grid: gridOf(2, 3, 7.5), emax: 2 },
  fp4_e2m1: { grid: gridOf(2, 1, 6), emax: 2 },
};

/** nearest grid point to a >= 0, saturating; ties: away -> larger, even -> even index */
function nearestOnGrid(a: number, grid: number[], away: boolean): number {
  if (a >= grid[grid.length - 1]) return grid[grid.length - 1];
  let i = 0;
  while (grid[i + 1] <= a) i++;
  const dLo = a - grid[i];
  const dHi = grid[i + 1] - a;
  if (dLo < dHi) return grid[i];
  if (dHi < dLo) return grid[i + 1];
  return away || i % 2 === 1 ? grid[i + 1] : grid[i];
}

function naiveMx(x: Float32Array, spec: MxSpec): Float32Array {
  const out = new Float32Array(x.length);
  const k = spec.block;
  const away = spec.rounding === 'nearest';
  const fp = GRIDS[spec.element];
  const d = fp ? 0 : Number(spec.element.slice(3));
  const emaxElem = fp ? fp.emax : 0;
  for (let s = 0; s < x.length; s += k) {
    let amax = 0;
    for (let i = s; i < s + k; i++) if (Number.isFinite(x[i])) amax = Math.max(amax, Math.abs(x[i]));
    let e = -126;
    if (amax > 0) {
      e = Math.floor(Math.log2(amax));
      while (2 ** e > amax) e--;
      while (2 ** (e + 1) <= amax) e++;
    }
    e = Math.max(-127, Math.min(127, e - emaxElem));
    for (let i = s; i < s + k; i++) {
      const v = x[i];
      if (Number.isNaN(v)) {
        out[i] = NaN_;
        continue;
      }
      const u = Math.abs(v) / 2 ** e;
      const neg = v < 0 || Object.is(v, -0);
      if (fp) {
        const m = nearestOnGrid(u, fp.grid, away);
        out[i] = (neg ? -m : m) * 2 ** e;
      } else {
        const unit = 2 ** (d - 2);
        const qmax = 2 ** (d - 1) - 1;
        const t = u * unit;
        const q = Math.min(qmax, away ? rhaz(t) : rne(t));
        out[i] = ((neg ? -q : q) / unit) * 2 ** e + 0;
      }
    }
  }
  return out;
}

/** random values with many exact ties: small integers times powers of two, plus normals */
function tieHeavy(r: ReturnType<typeof rng>, n: number): Float32Array {
  const x = r.normal(n);
  for (let i = 0; i < n; i++) {
    const u = r.uniform();
    if (u < 0.5) x[i] = Math.floor(r.uniform() * 33 - 16) * 2 ** Math.floor(r.uniform() * 8 - 6);
    else if (u < 0.55) x[i] = 0;
    else if (u < 0.57) x[i] = -0;
  }
  return x;
}

/** INT groups whose scale is an exact power of two, so x / scale and min / scale hit .5 ties */
function intTieGroups(
  r: ReturnType<typeof rng>,
  rows: number,
  cols: number,
  g: number,
  spec: IntSpec,
): Float32Array {
  const x = new Float32Array(rows * cols);
  const qmax = spec.symmetric ? 2 ** (spec.bits - 1) - 1 : 2 ** spec.bits - 1;
  for (let s = 0; s < x.length; s += g) {
    const step = 2 ** Math.floor(r.uniform() * 6 - 3);
    const lo = spec.symmetric ? -qmax * step : (Math.floor(r.uniform() * 4 * qmax) - 2 * qmax) * (step / 2);
    const hi = spec.symmetric ? qmax * step : lo + qmax * step;
    for (let i = 0; i < g; i++) x[s + i] = lo + Math.floor(r.uniform() * (2 * qmax + 1)) * (step / 2);
    x[s] = lo;
    x[s + g - 1] = hi;
  }
  return x;
}

describe('randomized against naive float64 implementations', () => {
  test('INT asym / sym, group / row, bits 2..8, with and without clip', () => {
    const r = rng(1234);
    const rows = 3;
    const cols = 64;
    let cases = 0;
    for (let bits = 2; bits <= 8; bits++)
      for (const symmetric of [false, true])
        for (const group of [4, 16, 64, undefined])
          for (const clip of [undefined, 0.9, 0.55]) {
            const spec = int(bits, symmetric, group, clip);
            const g = group ?? cols;
            const inputs = [
              r.normal(rows * cols, 0.05),
              tieHeavy(r, rows * cols),
              intTieGroups(r, rows, cols, g, spec),
            ];
            inputs[0][5] = INF;
            inputs[0][70] = NaN_;
            inputs[0][100] = -INF;
            for (const x of inputs) {
              same(fakeQuantInt(x, rows, cols, spec), naiveInt(x, cols, spec), formatName(spec));
              cases++;
            }
          }
    assert.equal(cases, 7 * 2 * 4 * 3 * 3);
  });

  test('the tie generator really produces ties (the test above can fail)', () => {
    const r = rng(7);
    const spec = int(4, false, 16);
    const x = intTieGroups(r, 1, 64, 16, spec);
    const e = encode(x, 1, 64, spec);
    let ties = 0;
    for (let i = 0; i < 64; i++) {
      const t = x[i] / e.scales[Math.floor(i / 16)];
      if (t - Math.floor(t) === 0.5) ties++;
    }
    assert.ok(ties > 10, `only ${ties} ties`);
    // and half-up rounding would give a different answer than the library
    const halfUp = Array.from({ length: 64 }, (_, i) => {
      const s = e.scales[Math.floor(i / 16)];
      const z = (e.zeros as Uint8Array)[Math.floor(i / 16)];
      return f32((Math.min(15, Math.max(0, Math.round(x[i] / s) + z)) - z) * s);
    });
    assert.notDeepEqual(halfUp, Array.from(fakeQuantInt(x, 1, 64, spec)));
  });

  test('MXINT2..8 and MXFP (all elements), both roundings, blocks 8 / 32', () => {
    const r = rng(99);
    const rows = 4;
    const cols = 64;
    const elements: MxElement[] = [
      'int8',
      'int7',
      'int6',
      'int5',
      'int4',
      'int3',
      'int2',
      'fp8_e4m3',
      'fp8_e5m2',
      'fp6_e3m2',
      'fp6_e2m3',
      'fp4_e2m1',
    ];
    for (const element of elements)
      for (const rounding of ['nearest', 'even'] as const)
        for (const block of [8, 32]) {
          const spec = mx(element, block, rounding);
          const inputs = [r.normal(rows * cols, 3), tieHeavy(r, rows * cols)];
          inputs[0][3] = INF;
          inputs[0][9] = -INF;
          inputs[0][17] = NaN_;
          inputs[1].fill(0, 0, 2 * block); // an all-zero block, then a block of f32 subnormals
          inputs[1][block + 1] = 2 ** -140;
          inputs[1][block + 2] = -3 * 2 ** -143;
          inputs[1][block + 3] = 5 * 2 ** -147;
          for (const x of inputs)
            same(fakeQuantRows(x, rows, cols, spec), naiveMx(x, spec), formatName(spec));
        }
  });

  test('single-value helpers agree with the matrix paths', () => {
    const r = rng(5);
    const x = tieHeavy(r, 32);
    for (const element of ['int4', 'fp4_e2m1', 'fp8_e4m3'] as const)
      for (const rounding of ['nearest', 'even'] as const) {
        const spec = mx(element, 32, rounding);
        const e = encode(x, 1, 32, spec);
        const fqv = fakeQuantRows(x, 1, 32, spec);
        const info = mxElementInfo(element);
        const ex = (e.exponents as Int16Array)[0];
        same(
          Array.from(x, (v) => mxQuantizeValue(v, ex, info, rounding)),
          fqv,
          `${element} ${rounding}`,
        );
      }
    const spec = int(3, false, 32);
    const p = intParams(x, 3, false);
    same(
      Array.from(x, (v) => intQuantizeValue(v, p.scale, p.zero, 3, false)),
      fakeQuantInt(x, 1, 32, spec),
    );
  });
});

describe('encode / decode', () => {
  const specs: FormatSpec[] = [
    ...[
      'int2-g8',
      'int3-g16-sym',
      'int4-g32',
      'int4-g32-sym-clip0.8',
      'int8-row-sym',
      'int5-row',
      'int6-tensor',
    ].map(parseFormat),
    { kind: 'int', bits: 7, symmetric: true, granularity: 'tensor' },
    ...[
      'mxint8',
      'mxint4-16',
      'mxint2-8-even',
      'mxint5',
      'mxfp4',
      'mxfp4-16-even',
      'mxfp6-e3m2',
      'mxfp6-e2m3',
    ].map(parseFormat),
    ...['mxfp8-e4m3', 'mxfp8-e5m2-even', 'fp8-e4m3-row', 'fp8-e5m2-tensor', 'fp8-e4m3-tensor', 'nvfp4'].map(
      parseFormat,
    ),
  ];

  test('decode(encode(x)) is bit-identical to fakeQuantRows(x), Inf and -0 included', () => {
    const r = rng(42);
    for (const spec of specs) {
      const x = tieHeavy(r, 4 * 64);
      x[7] = INF;
      x[130] = -INF;
      const e = encode(x, 4, 64, spec);
      assert.equal(e.bits, codeBits(spec));
      const max = 2 ** e.bits;
      for (const c of e.codes) assert.ok(c < max, `${formatName(spec)}: code ${c} exceeds ${e.bits} bits`);
      same(decode(e), fakeQuantRows(x, 4, 64, spec), formatName(spec));
      // codes survive packing
      same(unpackCodes(packCodes(e.codes, e.bits), e.bits, e.codes.length), e.codes, 'packed');
    }
  });

  test('decode refuses data that does not match the matrix', () => {
    const e = encode(new Float32Array(16), 2, 8, parseFormat('int4-g4'));
    throwsUser(() => decode({ ...e, codes: e.codes.subarray(0, 8) }), '8 codes', '2 x 8');
    throwsUser(() => decode({ ...e, zeros: undefined }), 'zero points');
    throwsUser(() => decode({ ...e, scales: e.scales.subarray(1) }), 'scales');
    const m = encode(new Float32Array(64), 2, 32, parseFormat('mxfp4-16'));
    throwsUser(() => decode({ ...m, exponents: undefined }), 'exponents');
    throwsUser(() => decode({ ...m, exponents: new Int16Array(3) }), '3 shared exponents', 'expected 4');
    const f = encode(new Float32Array(8), 2, 4, parseFormat('fp8-e4m3-row'));
    throwsUser(() => decode({ ...f, scales: new Float32Array(1) }), '1 FP8 scales');
    const v = encode(new Float32Array(32), 1, 32, parseFormat('nvfp4'));
    throwsUser(() => decode({ ...v, scaleCodes: new Uint8Array(1) }), '1 block scales');
    // empty matrices encode and decode
    for (const name of ['int4-tensor', 'int4-row', 'fp8-e4m3-tensor', 'fp8-e5m2-row', 'mxfp4', 'nvfp4'])
      same(decode(encode(new Float32Array(0), 0, 32, parseFormat(name))), [], name);
  });
});

describe('packCodes / unpackCodes', () => {
  test('hand-packed bytes, little-endian bit stream', () => {
    same(packCodes([3, 0, 1, 2], 2), [0b10010011], 'bits 2');
    // 3 bits: 1 | 2 << 3 | 3 << 6 = 0xd1, the last code's high bit (0) starts byte 1
    same(packCodes([1, 2, 3], 3), [0xd1, 0x00], 'bits 3');
    same(packCodes([7, 7, 7], 3), [0xff, 0x01], 'bits 3 ones');
    same(packCodes([1, 2, 3], 4), [0x21, 0x03], 'bits 4, low nibble first');
    same(packCodes([31, 1], 5), [0x3f, 0x00], 'bits 5');
    same(packCodes([0x3f, 0x2a], 6), [0xbf, 0x0a], 'bits 6');
    same(packCodes([1, 0x7f], 7), [0x81, 0x3f], 'bits 7');
    same(packCodes([0, 255, 17], 8), [0, 255, 17], 'bits 8');
    same(unpackCodes(new Uint8Array([0xd1, 0x00]), 3, 3), [1, 2, 3]);
  });

  test('round trip for bits 1..8 and odd counts', () => {
    const r = rng(3);
    for (let bits = 1; bits <= 8; bits++)
      for (const n of [0, 1, 7, 8, 33]) {
        const codes = Uint8Array.from({ length: n }, () => Math.floor(r.uniform() * 2 ** bits));
        const packed = packCodes(codes, bits);
        assert.equal(packed.length, Math.ceil((n * bits) / 8));
        same(unpackCodes(packed, bits, n), codes, `bits ${bits} n ${n}`);
      }
  });

  test('byte codes of 4 and 8 bits (the fast path) give the generic bit stream', () => {
    const r = rng(5);
    for (const bits of [4, 8])
      for (const n of [0, 1, 2, 1001]) {
        const codes = Uint8Array.from({ length: n }, () => Math.floor(r.uniform() * 2 ** bits));
        const generic = packCodes(Array.from(codes), bits);
        same(packCodes(codes, bits), generic, `bits ${bits} n ${n}`);
        same(unpackCodes(generic, bits, n), codes, `bits ${bits} n ${n} unpacked`);
      }
    throwsUser(() => packCodes(Uint8Array.from([1, 2, 3, 17, 4]), 4), 'code 17 at index 3', '4 bits');
  });

  test('errors', () => {
    throwsUser(() => packCodes([16], 4), 'code 16', '4 bits');
    throwsUser(() => packCodes([1.5], 4), 'code 1.5');
    throwsUser(() => packCodes([1], 9), 'bits');
    throwsUser(() => packCodes([1], 0), 'bits');
    throwsUser(() => unpackCodes(new Uint8Array(1), 3, 3), 'need 2 bytes', 'got 1');
  });
});

describe('format names', () => {
  test('parseFormat gives the documented specs and defaults', () => {
    assert.deepEqual(parseFormat('int4-g128'), {
      kind: 'int',
      bits: 4,
      symmetric: false,
      granularity: 'group',
      group: 128,
    });
    assert.deepEqual(parseFormat(' INT8-row-SYM '), {
      kind: 'int',
      bits: 8,
      symmetric: true,
      granularity: 'row',
    });
    assert.deepEqual(parseFormat('int4-g64-asym-clip0.9'), {
      kind: 'int',
      bits: 4,
      symmetric: false,
      granularity: 'group',
      group: 64,
      clip: 0.9,
    });
    assert.deepEqual(parseFormat('mxint8'), { kind: 'mx', element: 'int8', block: 32, rounding: 'nearest' });
    assert.deepEqual(parseFormat('mxfp8'), {
      kind: 'mx',
      element: 'fp8_e4m3',
      block: 32,
      rounding: 'nearest',
    });
    assert.deepEqual(parseFormat('mxfp4-16-even'), {
      kind: 'mx',
      element: 'fp4_e2m1',
      block: 16,
      rounding: 'even',
    });
    assert.deepEqual(parseFormat('mxfp6-e2m3-64'), {
      kind: 'mx',
      element: 'fp6_e2m3',
      block: 64,
      rounding: 'nearest',
    });
    assert.deepEqual(parseFormat('fp8'), { kind: 'fp8', element: 'e4m3', granularity: 'tensor' });
    assert.deepEqual(parseFormat('fp8-e5m2-row'), { kind: 'fp8', element: 'e5m2', granularity: 'row' });
    assert.deepEqual(parseFormat('nvfp4'), { kind: 'nvfp4' });
  });

  test('formatName / parseFormat round trip', () => {
    const names = [
      'int2-g32',
      'int3-g128-sym',
      'int4-g128-clip0.85',
      'int8-row-sym',
      'int4-row',
      'int8-tensor-sym',
      'int5-tensor',
      'mxint2',
      'mxint3-64',
      'mxint8-128-even',
      'mxfp4',
      'mxfp4-16-even',
      'mxfp6-e3m2',
      'mxfp6-e2m3-even',
      'mxfp8-e4m3',
      'mxfp8-e5m2-8',
      'fp8-e4m3-tensor',
      'fp8-e5m2-row',
      'nvfp4',
    ];
    for (const n of names) {
      assert.equal(formatName(parseFormat(n)), n);
      assert.deepEqual(parseFormat(formatName(parseFormat(n))), parseFormat(n));
    }
    const odd: IntSpec = {
      kind: 'int',
      bits: 4,
      symmetric: false,
      granularity: 'group',
      group: 8,
      clip: 1e-7,
    };
    assert.deepEqual(parseFormat(formatName(odd)), odd, 'exponent-notation clip');
    assert.equal(formatName(parseFormat('mxint4-32-nearest')), 'mxint4');
    assert.equal(formatName(parseFormat('int4-g128-asym-clip1')), 'int4-g128');
  });

  test('bad names get one-line errors listing the valid forms', () => {
    const bad = [
      '',
      'int4',
      'int1-g128',
      'int9-g128',
      'int4-g0',
      'int4-g128-clip0',
      'int4-g128-clip1.5',
      'int4-g128-foo',
      'mxint9',
      'mxint1',
      'mxint4-e2m1',
      'mxint8-0',
      'mxfp6',
      'mxfp8-e3m2',
      'mxfp4-e4m3',
      'fp8-e3m4',
      'fp16',
      'nvfp8',
    ];
    for (const n of bad) throwsUser(() => parseFormat(n), `unknown format '${n}'`, 'valid forms');
  });

  test('describeFormat and bitsPerElement', () => {
    assert.match(describeFormat(parseFormat('int4-g128')), /INT4 asymmetric.*group of 128.*half to even/);
    assert.match(describeFormat(parseFormat('mxfp4')), /E2M1.*blocks of 32.*half away from zero/);
    assert.match(describeFormat(parseFormat('mxint8-even')), /MXINT8.*127\/64|MXINT8.*1\.984375/);
    // int4 g128 asym: 4 + (16 + 4) / 128; sym int8 row of 4096: 8 + 16 / 4096
    assert.equal(bitsPerElement(parseFormat('int4-g128'), 4096), 4 + 20 / 128);
    assert.equal(bitsPerElement(parseFormat('int8-row-sym'), 4096), 8 + 16 / 4096);
    assert.equal(bitsPerElement(parseFormat('mxfp4'), 4096), 4.25);
    assert.equal(bitsPerElement(parseFormat('mxint4-16'), 4096), 4.5);
    assert.equal(bitsPerElement(parseFormat('nvfp4'), 64, 2), 4 + 0.5 + 32 / 128);
    assert.equal(bitsPerElement(parseFormat('fp8-e4m3-row'), 64), 8 + 0.5);
  });
});
