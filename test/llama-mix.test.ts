/**
 * llama-quantize's per-tensor types (formats/llama-mix.ts) for a 32-layer Llama, the layer lists written
 * out by hand from src/llama-quant.cpp's rules.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  isLlama70B,
  LLAMA_MIXES,
  type LlamaFileType,
  llamaTensorType,
  needsImatrix,
} from '../src/formats/llama-mix.ts';

const LAYERS = 32;
const linear = (name: string, layer: number) => ({ kind: 'linear', name, layer, layers: LAYERS }) as const;
const typesOf = (file: LlamaFileType, name: string, cols = 4096) =>
  Array.from({ length: LAYERS }, (_, i) => llamaTensorType(file, linear(name, i), cols));
/** use_more_bits for 32 layers: the first and last eighth, and every third layer from 6 on */
const MORE_BITS = new Set([0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);

test('the _m mixes take Q6_K for attn_v and ffn_down in the use_more_bits layers', () => {
  for (const [file, base] of [
    ['q4_k_m', 'q4_k'],
    ['q5_k_m', 'q5_k'],
  ] as const) {
    for (const name of ['v_proj', 'down_proj'])
      assert.deepEqual(
        typesOf(file, name),
        Array.from({ length: LAYERS }, (_, i) => (MORE_BITS.has(i) ? 'q6_k' : base)),
      );
    for (const name of ['q_proj', 'k_proj', 'o_proj', 'gate_proj', 'up_proj'])
      assert.deepEqual(new Set(typesOf(file, name)), new Set([base]));
  }
});

test('Q4_K_S: Q5_K for attn_v in layers 0-3 and ffn_down in the first eighth; _s and q6_k otherwise uniform', () => {
  const early = (i: number) => (i < 4 ? 'q5_k' : 'q4_k');
  assert.deepEqual(
    typesOf('q4_k_s', 'v_proj'),
    Array.from({ length: LAYERS }, (_, i) => early(i)),
  );
  assert.deepEqual(
    typesOf('q4_k_s', 'down_proj'),
    Array.from({ length: LAYERS }, (_, i) => early(i)),
  );
  assert.deepEqual(new Set(typesOf('q4_k_s', 'up_proj')), new Set(['q4_k']));
  // with 64 layers the first eighth of ffn_down is 8 layers, attn_v stays at 4
  const at = (name: string, i: number) =>
    llamaTensorType('q4_k_s', { kind: 'linear', name, layer: i, layers: 64 }, 4096);
  assert.deepEqual([at('down_proj', 7), at('down_proj', 8), at('v_proj', 4)], ['q5_k', 'q4_k', 'q4_k']);
  for (const [file, type] of [
    ['q5_k_s', 'q5_k'],
    ['q6_k', 'q6_k'],
  ] as const)
    for (const name of ['v_proj', 'down_proj', 'q_proj'])
      assert.deepEqual(new Set(typesOf(file, name)), new Set([type]));
});

test('output Q6_K under every type but q8_0; fallbacks for rows that are not whole super-blocks', () => {
  for (const file of ['q4_0', 'q4_k_s', 'q4_k_m', 'q5_k_s', 'q5_k_m', 'q6_k'] as const) {
    assert.equal(llamaTensorType(file, { kind: 'output' }, 4096), 'q6_k');
    assert.equal(llamaTensorType(file, { kind: 'output' }, 4000), 'q8_0');
    assert.equal(llamaTensorType(file, { kind: 'output' }, 4001), 'f16');
  }
  assert.equal(llamaTensorType('q8_0', { kind: 'output' }, 4096), 'q8_0');
  assert.equal(llamaTensorType('q4_k_m', { kind: 'embed' }, 4096), 'q4_k');
  assert.equal(llamaTensorType('q5_k_m', { kind: 'embed' }, 4096), 'q5_k');
  // rows of 704 (32 x 22): Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; rows of 700: F16
  assert.equal(llamaTensorType('q4_k_m', linear('up_proj', 5), 704), 'q5_0');
  assert.equal(llamaTensorType('q5_k_m', linear('up_proj', 5), 704), 'q5_1');
  assert.equal(llamaTensorType('q5_k_m', linear('down_proj', 6), 704), 'q8_0');
  assert.equal(llamaTensorType('q6_k', linear('up_proj', 5), 704), 'q8_0');
  assert.equal(llamaTensorType('q5_k_s', linear('up_proj', 5), 700), 'f16');
});

test('a 70B Llama (80 layers, grouped KV heads) takes Q5_K for attn_v where the mix gives Q4_K', () => {
  const llama3_70b = { numLayers: 80, numHeads: 64, numKvHeads: 8 };
  assert.equal(isLlama70B(llama3_70b), true);
  assert.equal(isLlama70B({ ...llama3_70b, numKvHeads: 64 }), false, "llama.cpp's 65B");
  assert.equal(isLlama70B({ ...llama3_70b, numLayers: 32 }), false);
  const v = (file: LlamaFileType, layer: number) =>
    llamaTensorType(file, { kind: 'linear', name: 'v_proj', layer, layers: 80, llama70B: true }, 8192);
  // use_more_bits over 80 layers: layers 0-9 and 70-79, every third from 12; layer 11 is not one of them
  assert.deepEqual(
    [v('q4_k_m', 11), v('q4_k_m', 12), v('q4_k_s', 11), v('q5_k_m', 11)],
    ['q5_k', 'q6_k', 'q5_k', 'q5_k'],
  );
  const down = llamaTensorType(
    'q4_k_m',
    { kind: 'linear', name: 'down_proj', layer: 11, layers: 80, llama70B: true },
    28672,
  );
  assert.equal(down, 'q4_k');
});

test('Q2_K and Q3_K_S/M/L: the bumped types of attn_v, attn_output and ffn_down, Q4_0 as the fallback', () => {
  const each = (type: string) => Array.from({ length: LAYERS }, () => type);
  // Q2_K: ffn_down and attn_output Q3_K; attn_v Q3_K, or Q4_K with 4+ query heads per KV head (n_gqa)
  assert.deepEqual(typesOf('q2_k', 'down_proj'), each('q3_k'));
  assert.deepEqual(typesOf('q2_k', 'o_proj'), each('q3_k'));
  assert.deepEqual(typesOf('q2_k', 'v_proj'), each('q3_k'));
  const v = (file: LlamaFileType, gqa: number) =>
    llamaTensorType(file, { kind: 'linear', name: 'v_proj', layer: 9, layers: LAYERS, gqa }, 4096);
  assert.deepEqual([v('q2_k', 3), v('q2_k', 4), v('q2_k_mix', 8)], ['q3_k', 'q4_k', 'q4_k']);
  for (const name of ['q_proj', 'k_proj', 'gate_proj', 'up_proj'])
    assert.deepEqual(typesOf('q2_k_mix', name), each('q2_k'));
  // Q3_K_S: Q3_K everywhere; Q3_K_L: Q5_K for attn_v, attn_output and ffn_down
  for (const name of ['v_proj', 'o_proj', 'down_proj', 'q_proj'])
    assert.deepEqual(typesOf('q3_k_s', name), each('q3_k'));
  for (const name of ['v_proj', 'o_proj', 'down_proj'])
    assert.deepEqual(typesOf('q3_k_l', name), each('q5_k'));
  assert.deepEqual(typesOf('q3_k_l', 'up_proj'), each('q3_k'));
  // Q3_K_M: attn_v Q5_K in layers 0-1, ffn_down Q5_K in the first sixteenth (2 of 32), Q4_K after
  const early = (n: number) => Array.from({ length: LAYERS }, (_, i) => (i < n ? 'q5_k' : 'q4_k'));
  assert.deepEqual(typesOf('q3_k_m', 'v_proj'), early(2));
  assert.deepEqual(typesOf('q3_k_m', 'down_proj'), early(2));
  assert.deepEqual(typesOf('q3_k_m', 'o_proj'), each('q4_k'));
  assert.deepEqual(typesOf('q3_k_m', 'gate_proj'), each('q3_k'));
  const down80 = (layer: number) =>
    llamaTensorType('q3_k_m', { kind: 'linear', name: 'down_proj', layer, layers: 80 }, 28672);
  assert.deepEqual([down80(4), down80(5)], ['q5_k', 'q4_k']);
  // Q2_K and Q3_K rows that are not whole super-blocks fall back to Q4_0 (llama.cpp 007dbbf)
  assert.equal(llamaTensorType('q3_k_s', linear('up_proj', 5), 384), 'q4_0');
  assert.equal(llamaTensorType('q2_k', linear('down_proj', 5), 704), 'q4_0');
  assert.equal(llamaTensorType('q3_k_m', linear('o_proj', 5), 384), 'q5_0');
  assert.equal(llamaTensorType('q2_k', { kind: 'output' }, 4096), 'q6_k');
  assert.equal(llamaTensorType('q3_k_m', { kind: 'embed' }, 4096), 'q3_k');
  // the 70B rule lifts Q3_K attn_v too
  const v70 = (file: LlamaFileType) =>
    llamaTensorType(
      file,
      { kind: 'linear', name: 'v_proj', layer: 40, layers: 80, llama70B: true, gqa: 8 },
      8192,
    );
  assert.deepEqual([v70('q3_k_s'), v70('q2_k'), v70('q3_k_m')], ['q5_k', 'q5_k', 'q5_k']);
});

test('Q2_K_S: Q2_K, Q4_K for attn_v with 4+ query heads per KV head and ffn_down in the first eighth', () => {
  const each = (type: string) => Array.from({ length: LAYERS }, () => type);
  const early = Array.from({ length: LAYERS }, (_, i) => (i < 4 ? 'q4_k' : 'q2_k'));
  assert.deepEqual(typesOf('q2_k_s', 'down_proj'), early);
  for (const name of ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj'])
    assert.deepEqual(typesOf('q2_k_s', name), each('q2_k'), name);
  const v = (gqa: number) =>
    llamaTensorType('q2_k_s', { kind: 'linear', name: 'v_proj', layer: 9, layers: LAYERS, gqa }, 4096);
  assert.deepEqual([v(1), v(3), v(4), v(8)], ['q2_k', 'q2_k', 'q4_k', 'q4_k']);
  assert.equal(llamaTensorType('q2_k_s', linear('up_proj', 5), 384), 'q4_0');
  assert.equal(llamaTensorType('q2_k_s', linear('down_proj', 0), 704), 'q5_0');
  assert.equal(llamaTensorType('q2_k_s', { kind: 'output' }, 4096), 'q6_k');
  assert.equal(llamaTensorType('q2_k_s', { kind: 'embed' }, 4096), 'q2_k');
});

test('IQ4_NL / IQ4_XS: Q5_K for attn_v with 4+ query heads per KV head, and for ffn_down in the first eighth unless there is an imatrix', () => {
  const at = (file: LlamaFileType, name: string, layer: number, extra: object = {}, cols = 4096) =>
    llamaTensorType(file, { ...linear(name, layer), ...extra }, cols);
  for (const [file, base] of [
    ['iq4_nl', 'iq4_nl'],
    ['iq4_xs', 'iq4_xs'],
    ['iq4_xs_mix', 'iq4_xs'],
  ] as const) {
    // 32 layers: the first eighth is layers 0-3
    assert.deepEqual(
      typesOf(file, 'down_proj'),
      Array.from({ length: LAYERS }, (_, i) => (i < 4 ? 'q5_k' : base)),
    );
    assert.equal(at(file, 'down_proj', 0, { imatrix: true }), base);
    assert.deepEqual(new Set(typesOf(file, 'v_proj')), new Set([base]));
    assert.equal(at(file, 'v_proj', 9, { gqa: 4 }), 'q5_k');
    assert.equal(at(file, 'v_proj', 9, { gqa: 2 }), base);
    for (const name of ['q_proj', 'k_proj', 'o_proj', 'gate_proj', 'up_proj'])
      assert.deepEqual(new Set(typesOf(file, name)), new Set([base]));
    assert.equal(llamaTensorType(file, { kind: 'output' }, 4096), 'q6_k');
    assert.equal(llamaTensorType(file, { kind: 'embed' }, 4096), base);
  }
  // rows of 704 (32 x 22): IQ4_XS -> IQ4_NL, Q5_K -> Q5_1
  assert.equal(at('iq4_xs', 'up_proj', 5, {}, 704), 'iq4_nl');
  assert.equal(at('iq4_xs', 'down_proj', 1, {}, 704), 'q5_1');
  assert.equal(at('iq4_nl', 'up_proj', 5, {}, 700), 'f16');
});

test('Q4_0 / Q5_0 file types: with an imatrix, ffn_down of the first eighth in Q4_1 / Q5_1; Q4_1 / Q5_1 uniform', () => {
  for (const [file, base, first] of [
    ['q4_0', 'q4_0', 'q4_1'],
    ['q4_0_mix', 'q4_0', 'q4_1'],
    ['q5_0', 'q5_0', 'q5_1'],
    ['q5_0_mix', 'q5_0', 'q5_1'],
  ] as const) {
    assert.deepEqual(new Set(typesOf(file, 'down_proj')), new Set([base]), `${file} without imatrix`);
    const down = Array.from({ length: LAYERS }, (_, i) =>
      llamaTensorType(file, { ...linear('down_proj', i), imatrix: true }, 4096),
    );
    assert.deepEqual(
      down,
      Array.from({ length: LAYERS }, (_, i) => (i < 4 ? first : base)),
    );
    assert.equal(llamaTensorType(file, { ...linear('up_proj', 0), imatrix: true }, 4096), base);
    assert.equal(llamaTensorType(file, { ...linear('v_proj', 0), imatrix: true, gqa: 8 }, 4096), base);
  }
  for (const file of ['q4_1', 'q5_1'] as const) {
    for (const name of ['v_proj', 'down_proj', 'q_proj'])
      assert.deepEqual(new Set(typesOf(file, name)), new Set([file]));
    assert.equal(llamaTensorType(file, { kind: 'output' }, 4096), 'q6_k');
  }
});

test("IQ3_S / IQ3_M / IQ3_XS: IQ3_S with llama-quantize's Q4_K and IQ3_XXS tensors; IQ3 falls back to IQ4_NL", () => {
  const at = (file: LlamaFileType, name: string, layer: number, extra: object = {}, cols = 4096) =>
    llamaTensorType(file, { ...linear(name, layer), ...extra }, cols);
  const each = (type: string) => Array.from({ length: LAYERS }, () => type);
  const firstEighth = (early: string, rest: string) =>
    Array.from({ length: LAYERS }, (_, i) => (i < 4 ? early : rest));
  for (const file of ['iq3_s', 'iq3_s_mix'] as const) {
    for (const name of ['q_proj', 'k_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'])
      assert.deepEqual(typesOf(file, name), each('iq3_s'), `${file} ${name}`);
    assert.deepEqual(
      [at(file, 'v_proj', 5, { gqa: 3 }), at(file, 'v_proj', 5, { gqa: 4 })],
      ['iq3_s', 'q4_k'],
    );
  }
  // IQ3_M: attn_v Q4_K whatever the GQA, attn_output Q4_K, ffn_down Q4_K in the first eighth
  assert.deepEqual(typesOf('iq3_m', 'v_proj'), each('q4_k'));
  assert.deepEqual(typesOf('iq3_m', 'o_proj'), each('q4_k'));
  assert.deepEqual(typesOf('iq3_m', 'down_proj'), firstEighth('q4_k', 'iq3_s'));
  for (const name of ['q_proj', 'k_proj', 'gate_proj', 'up_proj'])
    assert.deepEqual(typesOf('iq3_m', name), each('iq3_s'), `iq3_m ${name}`);
  // IQ3_XS: IQ3_XXS for attn_q / attn_k, and ffn_gate / ffn_up in layers [n/8, 7n/8)
  const middle = Array.from({ length: LAYERS }, (_, i) => (i >= 4 && i < 28 ? 'iq3_xxs' : 'iq3_s'));
  assert.deepEqual(typesOf('iq3_xs', 'gate_proj'), middle);
  assert.deepEqual(typesOf('iq3_xs', 'up_proj'), middle);
  assert.deepEqual(typesOf('iq3_xs', 'q_proj'), each('iq3_xxs'));
  assert.deepEqual(typesOf('iq3_xs', 'k_proj'), each('iq3_xxs'));
  for (const name of ['o_proj', 'down_proj']) assert.deepEqual(typesOf('iq3_xs', name), each('iq3_s'), name);
  assert.deepEqual(
    [at('iq3_xs', 'v_proj', 5, { gqa: 2 }), at('iq3_xs', 'v_proj', 5, { gqa: 8 })],
    ['iq3_s', 'q4_k'],
  );
  // the imatrix does not change these file types' rules
  assert.equal(at('iq3_m', 'down_proj', 0, { imatrix: true }), 'q4_k');
  assert.equal(llamaTensorType('iq3_m', { kind: 'output' }, 4096), 'q6_k');
  assert.equal(llamaTensorType('iq3_xs', { kind: 'embed' }, 4096), 'iq3_s');
  // rows of 384: IQ3_S and IQ3_XXS -> IQ4_NL, Q4_K -> Q5_0
  assert.deepEqual(
    [
      at('iq3_xs', 'q_proj', 5, {}, 384),
      at('iq3_m', 'gate_proj', 5, {}, 384),
      at('iq3_m', 'o_proj', 5, {}, 384),
    ],
    ['iq4_nl', 'iq4_nl', 'q5_0'],
  );
  // a 70B's attn_v in Q4_K takes Q5_K
  assert.equal(at('iq3_m', 'v_proj', 5, { llama70B: true }), 'q5_k');
});

test('IQ3_XXS / IQ2_M file types: IQ2_S for attn_q / attn_k, IQ3_S where they give more bits, Q5_K output, IQ3_S embeddings', () => {
  const at = (file: LlamaFileType, name: string, layer: number, extra: object = {}, cols = 4096) =>
    llamaTensorType(file, { ...linear(name, layer), ...extra }, cols);
  const each = (type: string) => Array.from({ length: LAYERS }, () => type);
  const im = { imatrix: true };
  for (const file of ['iq3_xxs', 'iq3_xxs_mix'] as const) {
    assert.deepEqual([at(file, 'q_proj', 3, im), at(file, 'k_proj', 3, im)], ['iq2_s', 'iq2_s']);
    assert.deepEqual(
      [at(file, 'gate_proj', 3, im), at(file, 'up_proj', 3, im), at(file, 'o_proj', 3, im)],
      ['iq3_xxs', 'iq3_xxs', 'iq3_s'],
    );
    // attn_v: Q4_K with 4+ query heads per KV head, else IQ3_XXS (IQ3_S without an imatrix)
    assert.deepEqual(
      [at(file, 'v_proj', 3, { ...im, gqa: 4 }), at(file, 'v_proj', 3, im), at(file, 'v_proj', 3)],
      ['q4_k', 'iq3_xxs', 'iq3_s'],
    );
    // ffn_down: IQ3_XXS with an imatrix; without, Q4_K in the first eighth and Q3_K after
    assert.deepEqual(
      [at(file, 'down_proj', 0, im), at(file, 'down_proj', 0), at(file, 'down_proj', 9)],
      ['iq3_xxs', 'q4_k', 'q3_k'],
    );
    assert.equal(llamaTensorType(file, { kind: 'output' }, 4096), 'q5_k');
    assert.equal(llamaTensorType(file, { kind: 'embed' }, 4096), 'iq3_s');
  }
  assert.deepEqual(
    typesOf('iq2_m', 'down_proj'),
    Array.from({ length: LAYERS }, (_, i) => (i < 4 ? 'iq3_s' : 'iq2_s')),
  );
  assert.deepEqual(typesOf('iq2_m', 'o_proj'), each('iq3_s'));
  for (const name of ['q_proj', 'k_proj', 'gate_proj', 'up_proj'])
    assert.deepEqual(typesOf('iq2_m', name), each('iq2_s'));
  assert.deepEqual([at('iq2_m', 'v_proj', 3), at('iq2_m', 'v_proj', 3, { gqa: 8 })], ['iq3_s', 'q4_k']);
  // IQ2_M's attn_v is not bumped for a 70B (llama-quantize's low-bit IQ branch has no such rule)
  assert.equal(at('iq2_m', 'v_proj', 3, { gqa: 8, llama70B: true }), 'q4_k');
  assert.equal(llamaTensorType('iq2_m', { kind: 'output' }, 4096), 'q5_k');
  assert.equal(llamaTensorType('iq2_m', { kind: 'output' }, 384), 'q8_0');
  assert.equal(llamaTensorType('iq2_m', { kind: 'embed' }, 4096), 'iq3_s');
  assert.equal(at('iq2_m', 'q_proj', 3, {}, 384), 'iq4_nl');
});

test('IQ1_S / IQ1_M file types: that type, IQ2_XXS attn_output, Q2_K attn_v and first-eighth ffn_down, Q5_K output, Q2_K embeddings', () => {
  for (const [file, base] of [
    ['iq1_s', 'iq1_s'],
    ['iq1_s_mix', 'iq1_s'],
    ['iq1_m', 'iq1_m'],
    ['iq1_m_mix', 'iq1_m'],
  ] as const) {
    assert.deepEqual(
      typesOf(file, 'down_proj'),
      Array.from({ length: LAYERS }, (_, i) => (i < 4 ? 'q2_k' : base)),
    );
    for (const name of ['q_proj', 'k_proj', 'gate_proj', 'up_proj'])
      assert.deepEqual(typesOf(file, name), Array(LAYERS).fill(base), `${file} ${name}`);
    assert.deepEqual(typesOf(file, 'o_proj'), Array(LAYERS).fill('iq2_xxs'));
    const v = (extra: object) => llamaTensorType(file, { ...linear('v_proj', 3), ...extra }, 4096);
    assert.deepEqual([v({}), v({ gqa: 4 }), v({ gqa: 8, llama70B: true })], ['q2_k', 'q4_k', 'q4_k']);
    assert.equal(llamaTensorType(file, { kind: 'output' }, 4096), 'q5_k');
    assert.equal(llamaTensorType(file, { kind: 'embed' }, 4096), 'q2_k');
    assert.equal(llamaTensorType(file, linear('q_proj', 3), 384), 'iq4_nl');
  }
});

test('IQ2_XXS / IQ2_XS / IQ2_S file types: Q2_K (or IQ3_S for IQ2_S) where they give more bits, Q5_K output, no 70B bump', () => {
  const at = (file: LlamaFileType, name: string, layer: number, extra: object = {}, cols = 4096) =>
    llamaTensorType(file, { ...linear(name, layer), ...extra }, cols);
  const firstEighth = (more: string, base: string) =>
    Array.from({ length: LAYERS }, (_, i) => (i < 4 ? more : base));
  for (const [file, base, more, embed] of [
    ['iq2_xxs', 'iq2_xxs', 'q2_k', 'q2_k'],
    ['iq2_xxs_mix', 'iq2_xxs', 'q2_k', 'q2_k'],
    ['iq2_xs', 'iq2_xs', 'q2_k', 'q2_k'],
    ['iq2_xs_mix', 'iq2_xs', 'q2_k', 'q2_k'],
    // the IQ2_S file type is IQ2_XS tensors with IQ2_M's rules
    ['iq2_s', 'iq2_xs', 'iq3_s', 'iq3_s'],
    ['iq2_s_mix', 'iq2_xs', 'iq3_s', 'iq3_s'],
  ] as const) {
    assert.deepEqual(typesOf(file, 'down_proj'), firstEighth(more, base), file);
    for (const name of ['q_proj', 'k_proj', 'gate_proj', 'up_proj'])
      assert.deepEqual(typesOf(file, name), firstEighth(base, base), `${file} ${name}`);
    // attn_output: IQ3_S under IQ2_S, the base type under IQ2_XXS / IQ2_XS
    assert.equal(at(file, 'o_proj', 9), more === 'iq3_s' ? 'iq3_s' : base, file);
    assert.deepEqual(
      [
        at(file, 'v_proj', 3),
        at(file, 'v_proj', 3, { gqa: 4 }),
        at(file, 'v_proj', 3, { gqa: 8, llama70B: true }),
      ],
      [more, 'q4_k', 'q4_k'],
      file,
    );
    assert.equal(llamaTensorType(file, { kind: 'output' }, 4096), 'q5_k');
    assert.equal(llamaTensorType(file, { kind: 'embed' }, 4096), embed);
    assert.equal(at(file, 'q_proj', 3, {}, 384), 'iq4_nl');
  }
});

test("needsImatrix: the formats whose tensors llama-quantize's tensor_requires_imatrix covers", () => {
  const types = [...LLAMA_MIXES, 'q2_k', 'q3_k', 'q4_k', 'q4_0', 'iq4_xs', 'iq3_s', 'iq3_xxs'];
  const alsoTypes = ['iq2_xxs', 'iq2_xs', 'iq2_s', 'iq1_s', 'iq1_m', 'int4-g128'];
  assert.deepEqual(
    [...types, ...alsoTypes].filter(needsImatrix).sort(),
    [
      'q2_k_s',
      'iq3_xs', // IQ3_XXS for attn_q / attn_k
      'iq3_xxs_mix',
      'iq2_m',
      'iq2_s_mix',
      'iq2_xs_mix',
      'iq2_xxs_mix',
      'iq1_s_mix',
      'iq1_m_mix',
      'iq3_xxs',
      'iq2_xxs',
      'iq2_xs',
      'iq2_s',
      'iq1_s',
      'iq1_m',
    ].sort(),
  );
});
