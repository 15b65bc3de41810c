/**
 * llama.cpp's 3-bit lattice types IQ3_XXS and IQ3_S, byte for byte as ggml-quants.c writes them
 * (quantize_iq3_xxs / quantize_iq3_s, which llama-quantize calls, with and without an importance
 * matrix) and reads them (dequantize_row_iq3_xxs / _iq3_s). Sources read (public): ggml/src/
 * ggml-quants.c (iq3xs_init_impl, iq3_find_best_neighbour, quantize_row_iq3_xxs_impl,
 * quantize_row_iq3_s_impl) and ggml-common.h (block_iq3_xxs, block_iq3_s, iq3xxs_grid, iq3s_grid,
 * ksigns_iq2xs) of ggml-org/llama.cpp as node-llama-cpp 3.22.1 bundles it.
 *
 * Values go in groups of 4 whose magnitudes must be one point of a fixed grid (256 points for IQ3_XXS,
 * 512 for IQ3_S) of the 8^4 combinations of 8 odd levels 2l + 1; the signs are stored apart. The grids
 * are the only tables: llama.cpp's 12-bit point lists (3 bits per level) below. The dequantizers' grids
 * follow from them: IQ3_S's bytes are 2l + 1, IQ3_XXS's 4 (2l + 1) except 62 (not 60) for l = 7.
 * - IQ3_XXS (98 bytes per 256): fp16 d, 64 grid indices, then per sub-block of 32 a u32 holding four
 *   7-bit sign masks (the 8th sign of each 8 is their parity: the quantizer flips the least important
 *   value's sign to make the count even) and a 4-bit scale ls; x = (d (0.5 + ls) 0.5) grid * sign.
 * - IQ3_S (110 bytes per 256): fp16 d, 64 low bytes of 9-bit grid indices, 8 bytes of their high bits,
 *   32 bytes of signs, 4 bytes of 4-bit scales; x = (d (1 + 2 ls)) grid * sign.
 * The quantizer, per sub-block of 32: weights x^2 (with an importance matrix: importance *
 * sqrt(2 mean x^2 of the super-block + x^2)); for scales max / (15 + 0.2 t) (t = -15..15 for IQ3_XXS,
 * -9..9 for IQ3_S), each group of 4 rounds to the nearest levels, and a combination off the grid takes
 * its best neighbour (by weighted distance among the grid points at the 2 or 3 smallest distances);
 * the weighted least-squares scale of the best fit, refitted after re-picking the groups that were off
 * the grid. d = (largest sub-block scale) / 31 times a fudge factor (1.0125, 1.033), ls the nearest odd
 * multiple. All arithmetic is float32 in C's order (Math.fround after each operation).
 *
 * One quirk kept for byte identity: IQ3_S skips an all-zero sub-block without advancing its index and
 * sign pointers, so the next sub-block's indices and signs land in the skipped one's place.
 */
import {
  blockCount,
  GGML_BLOCK,
  type GgmlGroupCodes,
  groupCodes,
  type Importance,
  readF16,
  writeF16,
} from './ggml.ts';
import {
  checkSuperBlockRows,
  type LatticeSpec,
  pointCodes,
  pointOf,
  readU32,
  searchSuperBlockAt,
  signBits,
  signedCodeLevels,
  superScales,
  withParity,
  writeU32,
} from './lattice.ts';

/** iq3xs_init_impl's kgrid_256: the IQ3_XXS grid, level l_i of point p at bits 3i of p. */
const KGRID_256 = Uint16Array.from([
  0, 2, 4, 9, 11, 15, 16, 18, 25, 34, 59, 61, 65, 67, 72, 74, 81, 85, 88, 90, 97, 108, 120, 128, 130, 132,
  137, 144, 146, 153, 155, 159, 169, 175, 189, 193, 199, 200, 202, 213, 248, 267, 287, 292, 303, 315, 317,
  321, 327, 346, 362, 413, 436, 456, 460, 462, 483, 497, 513, 515, 520, 522, 529, 531, 536, 538, 540, 551,
  552, 576, 578, 585, 592, 594, 641, 643, 648, 650, 657, 664, 698, 704, 706, 720, 729, 742, 758, 769, 773,
  808, 848, 852, 870, 889, 901, 978, 992, 1024, 1026, 1033, 1035, 1040, 1042, 1046, 1049, 1058, 1089, 1091,
  1093, 1096, 1098, 1105, 1112, 1139, 1143, 1144, 1152, 1154, 1161, 1167, 1168, 1170, 1183, 1184, 1197, 1217,
  1224, 1228, 1272, 1276, 1309, 1323, 1347, 1367, 1377, 1404, 1473, 1475, 1486, 1509, 1537, 1544, 1546, 1553,
  1555, 1576, 1589, 1594, 1600, 1602, 1616, 1625, 1636, 1638, 1665, 1667, 1672, 1685, 1706, 1722, 1737, 1755,
  1816, 1831, 1850, 1856, 1862, 1874, 1901, 1932, 1950, 1971, 2011, 2032, 2052, 2063, 2077, 2079, 2091, 2095,
  2172, 2192, 2207, 2208, 2224, 2230, 2247, 2277, 2308, 2345, 2356, 2389, 2403, 2424, 2501, 2504, 2506, 2520,
  2570, 2593, 2616, 2624, 2630, 2646, 2669, 2700, 2714, 2746, 2754, 2795, 2824, 2835, 2839, 2874, 2882, 2905,
  2984, 3028, 3042, 3092, 3108, 3110, 3124, 3153, 3185, 3215, 3252, 3288, 3294, 3364, 3397, 3434, 3483, 3523,
  3537, 3587, 3589, 3591, 3592, 3610, 3626, 3670, 3680, 3722, 3749, 3754, 3776, 3789, 3803, 3824, 3857, 3873,
  3904, 3906, 3924, 3992,
]);

/** iq3xs_init_impl's kgrid_512: the IQ3_S grid. */
const KGRID_512 = Uint16Array.from([
  0, 1, 2, 5, 7, 8, 9, 10, 12, 14, 16, 17, 21, 27, 32, 34, 37, 39, 41, 43, 48, 50, 57, 60, 63, 64, 65, 66, 68,
  72, 73, 77, 80, 83, 87, 89, 93, 100, 113, 117, 122, 128, 129, 133, 135, 136, 139, 142, 145, 149, 152, 156,
  162, 165, 167, 169, 171, 184, 187, 195, 201, 205, 208, 210, 217, 219, 222, 228, 232, 234, 247, 249, 253,
  256, 267, 271, 273, 276, 282, 288, 291, 297, 312, 322, 324, 336, 338, 342, 347, 353, 357, 359, 374, 379,
  390, 393, 395, 409, 426, 441, 448, 450, 452, 464, 466, 470, 475, 488, 492, 512, 513, 514, 516, 520, 521,
  523, 525, 527, 528, 530, 537, 540, 542, 556, 558, 561, 570, 576, 577, 579, 582, 584, 588, 593, 600, 603,
  609, 616, 618, 632, 638, 640, 650, 653, 655, 656, 660, 666, 672, 675, 685, 688, 698, 705, 708, 711, 712,
  715, 721, 727, 728, 732, 737, 754, 760, 771, 773, 778, 780, 793, 795, 802, 806, 808, 812, 833, 840, 843,
  849, 856, 858, 873, 912, 916, 919, 932, 934, 961, 963, 968, 970, 977, 989, 993, 1010, 1016, 1024, 1025,
  1027, 1029, 1031, 1032, 1034, 1036, 1038, 1041, 1043, 1047, 1048, 1050, 1057, 1059, 1061, 1064, 1066, 1079,
  1080, 1083, 1085, 1088, 1090, 1096, 1099, 1103, 1106, 1109, 1113, 1116, 1122, 1129, 1153, 1156, 1159, 1169,
  1171, 1176, 1183, 1185, 1195, 1199, 1209, 1212, 1216, 1218, 1221, 1225, 1234, 1236, 1241, 1243, 1250, 1256,
  1270, 1281, 1287, 1296, 1299, 1306, 1309, 1313, 1338, 1341, 1348, 1353, 1362, 1375, 1376, 1387, 1400, 1408,
  1410, 1415, 1425, 1453, 1457, 1477, 1481, 1494, 1496, 1507, 1512, 1538, 1545, 1547, 1549, 1551, 1554, 1561,
  1563, 1565, 1570, 1572, 1575, 1577, 1587, 1593, 1601, 1603, 1605, 1612, 1617, 1619, 1632, 1648, 1658, 1662,
  1664, 1674, 1680, 1690, 1692, 1704, 1729, 1736, 1740, 1745, 1747, 1751, 1752, 1761, 1763, 1767, 1773, 1787,
  1795, 1801, 1806, 1810, 1817, 1834, 1840, 1844, 1857, 1864, 1866, 1877, 1882, 1892, 1902, 1915, 1934, 1953,
  1985, 1987, 2000, 2002, 2013, 2048, 2052, 2058, 2064, 2068, 2071, 2074, 2081, 2088, 2104, 2114, 2119, 2121,
  2123, 2130, 2136, 2141, 2147, 2153, 2157, 2177, 2179, 2184, 2189, 2193, 2203, 2208, 2223, 2226, 2232, 2244,
  2249, 2251, 2256, 2258, 2265, 2269, 2304, 2306, 2324, 2335, 2336, 2361, 2373, 2375, 2385, 2418, 2443, 2460,
  2480, 2504, 2509, 2520, 2531, 2537, 2562, 2568, 2572, 2578, 2592, 2596, 2599, 2602, 2614, 2620, 2625, 2627,
  2629, 2634, 2641, 2650, 2682, 2688, 2697, 2707, 2712, 2718, 2731, 2754, 2759, 2760, 2775, 2788, 2793, 2805,
  2811, 2817, 2820, 2832, 2842, 2854, 2890, 2902, 2921, 2923, 2978, 3010, 3012, 3026, 3081, 3083, 3085, 3097,
  3099, 3120, 3136, 3152, 3159, 3188, 3210, 3228, 3234, 3245, 3250, 3256, 3264, 3276, 3281, 3296, 3349, 3363,
  3378, 3392, 3395, 3420, 3440, 3461, 3488, 3529, 3531, 3584, 3588, 3591, 3600, 3602, 3614, 3616, 3628, 3634,
  3650, 3657, 3668, 3683, 3685, 3713, 3716, 3720, 3726, 3729, 3736, 3753, 3778, 3802, 3805, 3819, 3841, 3845,
  3851, 3856, 3880, 3922, 3938, 3970, 3993, 4032,
]);

export type Iq3Type = 'iq3_xxs' | 'iq3_s';
export const IQ3_XXS_BLOCK_BYTES = GGML_BLOCK.IQ3_XXS.bytes;
export const IQ3_S_BLOCK_BYTES = GGML_BLOCK.IQ3_S.bytes;
const QK_K = 256;
const SUB = 32;
const fr = Math.fround;

const SPECS: Record<Iq3Type, LatticeSpec> = {
  iq3_xxs: {
    points: KGRID_256,
    group: 4,
    levelBits: 3,
    maxLevel: 7,
    distances: 2,
    subBlock: SUB,
    steps: 15,
    stepSize: 0.2,
    skipBelow: fr(1e-8),
    paritySigns: true,
    refit: 'off-grid',
    sigmaScale: 2,
    plainWeights: 'x2',
    trialMax: 'max',
    fudge: 1.0125,
    // 4 (2l + 1), but 62 for l = 7
    codeLevels: signedCodeLevels([4, 12, 20, 28, 36, 44, 52, 62]),
  },
  iq3_s: {
    points: KGRID_512,
    group: 4,
    levelBits: 3,
    maxLevel: 7,
    distances: 3,
    subBlock: SUB,
    steps: 9,
    stepSize: 0.2,
    skipBelow: 0,
    paritySigns: false,
    refit: 'all-if-off-grid',
    sigmaScale: 2,
    plainWeights: 'x2',
    trialMax: 'max',
    fudge: 1.033,
    codeLevels: signedCodeLevels([1, 3, 5, 7, 9, 11, 13, 15]),
  },
};

/** The type's search (the WebGPU search kernel follows it and uploads its grid tables). */
export const iq3Spec = (type: Iq3Type): Readonly<LatticeSpec> => SPECS[type];

/** x (rows of a multiple of 256) -> IQ3_XXS blocks, as llama.cpp's quantize_iq3_xxs (imatrix: its quant_weights). */
export function quantizeIq3Xxs(x: Float32Array, imatrix?: Importance): Uint8Array {
  checkSuperBlockRows(x, imatrix, 'IQ3_XXS');
  const out = new Uint8Array((x.length / QK_K) * IQ3_XXS_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK_K; b++) {
    const o = b * IQ3_XXS_BLOCK_BYTES;
    const subs = searchSuperBlockAt(SPECS.iq3_xxs, x, b, imatrix);
    const scales = superScales(subs);
    if (!scales) continue;
    const { d, ls } = scales;
    writeF16(out, o, fr(d * fr(SPECS.iq3_xxs.fudge)));
    subs.forEach((s, ib) => {
      if (s) out.set(s.grid, o + 2 + 8 * ib);
      const signs = s ? s.signs[0] | (s.signs[1] << 7) | (s.signs[2] << 14) | (s.signs[3] << 21) : 0;
      writeU32(out, o + 66 + 4 * ib, (signs | (ls[ib] << 28)) >>> 0);
    });
  }
  return out;
}

/** x (rows of a multiple of 256) -> IQ3_S blocks, as llama.cpp's quantize_iq3_s (imatrix: its quant_weights). */
export function quantizeIq3S(x: Float32Array, imatrix?: Importance): Uint8Array {
  checkSuperBlockRows(x, imatrix, 'IQ3_S');
  const out = new Uint8Array((x.length / QK_K) * IQ3_S_BLOCK_BYTES);
  for (let b = 0; b < x.length / QK_K; b++) {
    const o = b * IQ3_S_BLOCK_BYTES;
    const subs = searchSuperBlockAt(SPECS.iq3_s, x, b, imatrix);
    let slot = 0;
    subs.forEach((s, ib) => {
      if (!s) return;
      for (let k = 0; k < 8; k++) {
        out[o + 2 + 8 * slot + k] = s.grid[k] & 255;
        out[o + 66 + ib] |= (s.grid[k] >> 8) << k;
      }
      out.set(s.signs, o + 74 + 4 * slot);
      slot++;
    });
    const scales = superScales(subs);
    if (!scales) continue;
    const { d, ls } = scales;
    writeF16(out, o, fr(d * fr(SPECS.iq3_s.fudge)));
    for (let ib = 0; ib < QK_K / SUB; ib += 2) out[o + 106 + ib / 2] = ls[ib] | (ls[ib + 1] << 4);
  }
  return out;
}

/** The codes of 8 values: grid points p1, p2 (4 values each), sign bit i of `signs` negating value i. */
function groupOf8(type: Iq3Type, p1: number, p2: number, signs: number, codes: Uint8Array, at: number) {
  pointCodes(SPECS[type], p1, signs, codes, at);
  pointCodes(SPECS[type], p2, signs >> 4, codes, at + 4);
}

/** IQ3_XXS blocks as codes (level + 8 for negative) and per-32 scale d (0.5 + ls) 0.5: x = scale * level[code]. */
export function unpackIq3Xxs(
  bytes: Uint8Array,
  n = (bytes.length / IQ3_XXS_BLOCK_BYTES) * QK_K,
): GgmlGroupCodes {
  const u: GgmlGroupCodes = { ...groupCodes(n, SUB, 4, false), levels: SPECS.iq3_xxs.codeLevels };
  for (let b = 0; b < blockCount(bytes, 'IQ3_XXS', n); b++) {
    const o = b * IQ3_XXS_BLOCK_BYTES;
    const d = readF16(bytes, o);
    for (let ib = 0; ib < QK_K / SUB; ib++) {
      const aux = readU32(bytes, o + 66 + 4 * ib);
      u.scales[b * 8 + ib] = fr(fr(d * fr(0.5 + (aux >>> 28))) * 0.5);
      for (let l = 0; l < 4; l++) {
        const q = o + 2 + 8 * ib + 2 * l;
        const signs = withParity((aux >>> (7 * l)) & 127);
        groupOf8('iq3_xxs', bytes[q], bytes[q + 1], signs, u.codes, b * QK_K + ib * SUB + 8 * l);
      }
    }
  }
  return u;
}

/** IQ3_S blocks as codes (level + 8 for negative) and per-32 scale d (1 + 2 ls): x = scale * level[code]. */
export function unpackIq3S(bytes: Uint8Array, n = (bytes.length / IQ3_S_BLOCK_BYTES) * QK_K): GgmlGroupCodes {
  const u: GgmlGroupCodes = { ...groupCodes(n, SUB, 4, false), levels: SPECS.iq3_s.codeLevels };
  for (let b = 0; b < blockCount(bytes, 'IQ3_S', n); b++) {
    const o = b * IQ3_S_BLOCK_BYTES;
    const d = readF16(bytes, o);
    for (let ib = 0; ib < QK_K / SUB; ib++) {
      const ls = (bytes[o + 106 + (ib >> 1)] >> (4 * (ib % 2))) & 15;
      u.scales[b * 8 + ib] = fr(d * (1 + 2 * ls));
      const qh = bytes[o + 66 + ib];
      for (let l = 0; l < 4; l++) {
        const q = o + 2 + 8 * ib + 2 * l;
        const p1 = bytes[q] | (((qh >> (2 * l)) & 1) << 8);
        const p2 = bytes[q + 1] | (((qh >> (2 * l + 1)) & 1) << 8);
        groupOf8('iq3_s', p1, p2, bytes[o + 74 + 4 * ib + l], u.codes, b * QK_K + ib * SUB + 8 * l);
      }
    }
  }
  return u;
}

/** The grid index of the 4 codes at codes[at]. */
const pointOfCodes = (type: Iq3Type, codes: Uint8Array, at: number) => pointOf(SPECS[type], codes, at, type);

/** Writes an IQ3_XXS block's grid indices and sign bits from 256 codes (d and the 4-bit scales are kept). */
export function packIq3XxsCodes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let ib = 0; ib < QK_K / SUB; ib++) {
    let signs = 0;
    for (let l = 0; l < 4; l++) {
      const c = at + ib * SUB + 8 * l;
      out[o + 2 + 8 * ib + 2 * l] = pointOfCodes('iq3_xxs', codes, c);
      out[o + 2 + 8 * ib + 2 * l + 1] = pointOfCodes('iq3_xxs', codes, c + 4);
      signs |= (signBits(codes, c) & 127) << (7 * l);
    }
    const aux = readU32(out, o + 66 + 4 * ib);
    writeU32(out, o + 66 + 4 * ib, ((aux & 0xf0000000) | signs) >>> 0);
  }
}

/** Writes an IQ3_S block's grid indices, their high bits and the signs from 256 codes (d and scales are kept). */
export function packIq3SCodes(codes: Uint8Array, at: number, out: Uint8Array, o: number): void {
  for (let ib = 0; ib < QK_K / SUB; ib++) {
    let qh = 0;
    for (let k = 0; k < 8; k++) {
      const j = pointOfCodes('iq3_s', codes, at + ib * SUB + 4 * k);
      out[o + 2 + 8 * ib + k] = j & 255;
      qh |= (j >> 8) << k;
    }
    out[o + 66 + ib] = qh;
    for (let l = 0; l < 4; l++) out[o + 74 + 4 * ib + l] = signBits(codes, at + ib * SUB + 8 * l);
  }
}
