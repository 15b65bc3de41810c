/**
 * llama-quantize's per-tensor types (formats/llama-mix.ts) for a 32-layer Llama, the layer lists written
 * out by hand from src/llama-quant.cpp's rules.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isLlama70B, type LlamaFileType, llamaTensorType } from '../src/formats/llama-mix.ts';

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
