/**
 * GGUF export for llama.cpp / node-llama-cpp.
 * (a) Q8_0 / Q4_0 blocks against hand-computed bytes and against naive per-block versions of
 *     llama.cpp's quantize_row_q8_0_ref / quantize_row_q4_0_ref written here (own fp16 rounding).
 * (b) llama-tiny exported to q8_0, q4_0 and f16, read back with a naive GGUF parser written here:
 *     metadata against config.json / tokenizer.json, tensor names, dims, types, alignment, weights
 *     against the naive quantizers, the q/k rotary row permutation (un-permuted here), an llmq
 *     weight-only checkpoint as the source.
 * (c) refusals: existing output without --force, W8A8 checkpoints, malformed GGUF files.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { UserError } from '../src/errors.ts';
import {
  dequantizeF16,
  dequantizeQ4_0,
  dequantizeQ8_0,
  quantizeF16,
  quantizeQ4_0,
  quantizeQ5_0,
  quantizeQ5_1,
  quantizeQ8_0,
} from '../src/formats/ggml.ts';
import { quantizeQ4_K, quantizeQ5_K, quantizeQ6_K } from '../src/formats/kquants.ts';
import { exportGguf, type GgufExportType } from '../src/io/export/gguf.ts';
import { GgufWriter, gguf, readGguf, readGgufTensor, writeGguf } from '../src/io/gguf.ts';
import { openCheckpoint, type TensorToWrite, writeSafetensors } from '../src/io/safetensors.ts';
import type { LlamaModel } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { saveQuantized } from '../src/quant/checkpoint.ts';
import { loadModel } from '../src/quant/load.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { LLAMA3_PRE_TOKENIZER, MODELS, rng, testManifest } from './helpers.ts';

const cpu = new CpuBackend();
const TINY = `${MODELS}llama-tiny`;
const ROOT = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-gguf-'));
after(() => fs.rmSync(ROOT, { recursive: true, force: true }));

const fr = Math.fround;

// ---------------------------------------------------------------------------------------------
// naive reference quantizers

/** Round half to even on an exact double. */
function rne(v: number): number {
  const f = Math.floor(v);
  const rest = v - f;
  if (rest > 0.5) return f + 1;
  if (rest < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** IEEE binary16 bits of x (finite, |x| < 65520), round to nearest even, subnormals. */
function naiveF16Bits(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === 0) return sign;
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  if (2 ** (e + 1) <= a) e += 1;
  if (e < -14) return sign | rne(a / 2 ** -24); // 1024 lands on the smallest normal, as it should
  let m = rne(a / 2 ** (e - 10));
  if (m === 2048) {
    m = 1024;
    e += 1;
  }
  assert.ok(e <= 15, `${x} overflows fp16`);
  return sign | ((e + 15) << 10) | (m - 1024);
}

function naiveF16Value(bits: number): number {
  const s = bits & 0x8000 ? -1 : 1;
  const e = (bits >> 10) & 31;
  const m = bits & 1023;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}

/** quantize_row_q8_0_ref on one block -> 34 bytes */
function naiveQ8_0(block: number[]): number[] {
  let amax = 0;
  for (const v of block) amax = Math.max(amax, Math.abs(v));
  const d = fr(amax / 127);
  const id = d !== 0 ? fr(1 / d) : 0;
  const h = naiveF16Bits(d);
  const qs = block.map((v) => {
    const t = fr(v * id);
    const q = t < 0 ? -Math.round(-t) : Math.round(t); // roundf: halves away from zero
    return q & 0xff;
  });
  return [h & 0xff, h >> 8, ...qs];
}

/** quantize_row_q4_0_ref on one block -> 18 bytes */
function naiveQ4_0(block: number[], fma = false): number[] {
  let amax = 0;
  let max = 0;
  for (const v of block) {
    if (Math.abs(v) > amax) {
      amax = Math.abs(v);
      max = v;
    }
  }
  const d = fr(max / -8);
  const id = d !== 0 ? fr(1 / d) : 0;
  const codes = block.map((v) => Math.min(15, Math.trunc(fma ? fr(v * id + 8.5) : fr(fr(v * id) + 8.5))));
  const h = naiveF16Bits(d);
  const qs = [];
  for (let j = 0; j < 16; j++) qs.push(codes[j] | (codes[j + 16] << 4));
  return [h & 0xff, h >> 8, ...qs];
}

function naiveBlocks(x: Float32Array, q: (b: number[]) => number[]): Uint8Array {
  const out: number[] = [];
  for (let s = 0; s < x.length; s += 32) out.push(...q(Array.from(x.subarray(s, s + 32))));
  return Uint8Array.from(out);
}

function naiveDequant(bytes: Uint8Array, type: 'q8_0' | 'q4_0'): Float32Array {
  const size = type === 'q8_0' ? 34 : 18;
  const out: number[] = [];
  for (let o = 0; o < bytes.length; o += size) {
    const d = naiveF16Value(bytes[o] | (bytes[o + 1] << 8));
    if (type === 'q8_0') for (let j = 0; j < 32; j++) out.push(((bytes[o + 2 + j] << 24) >> 24) * d);
    else {
      const lo = [];
      const hi = [];
      for (let j = 0; j < 16; j++) {
        lo.push(((bytes[o + 2 + j] & 15) - 8) * d);
        hi.push(((bytes[o + 2 + j] >> 4) - 8) * d);
      }
      out.push(...lo, ...hi);
    }
  }
  return Float32Array.from(out);
}

function block(values: number[]): Float32Array {
  const x = new Float32Array(32);
  x.set(values);
  return x;
}

// ---------------------------------------------------------------------------------------------
// (a) block formats

describe('Q8_0 and Q4_0 blocks', () => {
  test('Q8_0 hand vectors: zero block, d = 1 with roundf halves away from zero', () => {
    assert.deepEqual([...quantizeQ8_0(new Float32Array(32))], new Array(34).fill(0));
    const x = block([127, -63.5, 0.5, -0.5, 1.5, 2.5, -2.5, -127, 126.49]);
    const q = quantizeQ8_0(x);
    assert.deepEqual([q[0], q[1]], [0x00, 0x3c]); // d = 1.0 in fp16
    const codes = [...q.subarray(2, 11)].map((b) => (b << 24) >> 24);
    assert.deepEqual(codes, [127, -64, 1, -1, 2, 3, -3, -127, 126]);
    assert.deepEqual([...dequantizeQ8_0(q).subarray(0, 9)], [127, -64, 1, -1, 2, 3, -3, -127, 126]);
  });

  test('Q8_0: the codes use 1/d of the float32 d, the stored d is fp16-rounded', () => {
    const x = block([1, 0.5, -0.25]); // d = fround(1/127), 1/d = 127.00000...
    const q = quantizeQ8_0(x);
    const d16 = q[0] | (q[1] << 8);
    assert.equal(d16, naiveF16Bits(fr(1 / 127)));
    assert.equal(d16, 0x2008);
    assert.deepEqual(
      [...q.subarray(2, 5)].map((b) => (b << 24) >> 24),
      [127, 64, -32],
    );
  });

  test('Q4_0 hand vectors: zero block, negative max, ties at x/d + 8.5, saturation to 15', () => {
    // max stays 0, so d = 0 / -8 = -0: the reference stores fp16 -0 (0x8000) and codes 8
    const zero = quantizeQ4_0(new Float32Array(32));
    assert.deepEqual([...zero], [0x00, 0x80, ...new Array(16).fill(0x88)]);
    assert.ok(dequantizeQ4_0(zero).every((v) => v === 0)); // (8 - 8) * -0 = -0, as in C

    // max = -8 -> d = 1, id = 1: codes trunc(x + 8.5), capped at 15
    const x = block([-8, 1, 0.5, -0.5, 7.5, 7, -7.5, 0.49]);
    x[16] = 2.5;
    x[17] = -1.5;
    const q = quantizeQ4_0(x);
    assert.deepEqual([q[0], q[1]], [0x00, 0x3c]);
    const lo = [...q.subarray(2, 10)].map((b) => b & 15);
    assert.deepEqual(lo, [0, 9, 9, 8, 15, 15, 1, 8]); // 7.5 -> 16 saturates to 15
    assert.deepEqual([q[2] >> 4, q[3] >> 4], [11, 7]); // elements 16 and 17 in the high nibbles
    const y = dequantizeQ4_0(q);
    assert.deepEqual([...y.subarray(0, 8)], [-8, 1, 1, 0, 7, 7, -7, 0]);
    assert.deepEqual([y[16], y[17]], [3, -1]);
  });

  test('Q4_0: positive max gives a negative d; on equal magnitudes the first one wins', () => {
    const pos = quantizeQ4_0(block([8, -8, 4]));
    assert.deepEqual([pos[0], pos[1]], [0x00, 0xbc]); // d = -1
    assert.deepEqual([pos[2] & 15, pos[3] & 15, pos[4] & 15], [0, 15, 4]); // -8 -> 16.5 -> 15
    assert.deepEqual([...dequantizeQ4_0(pos).subarray(0, 3)], [8, -7, 4]);
    const neg = quantizeQ4_0(block([-8, 8]));
    assert.deepEqual([neg[0], neg[1]], [0x00, 0x3c]); // d = +1
    assert.deepEqual([neg[2] & 15, neg[3] & 15], [0, 15]);
  });

  test('Q4_0: ISO C float32 rounding vs a fused multiply-add differ where x*id rounds onto a tie', () => {
    // max -24: d = 3, id = fround(1/3) > 1/3; -22.5*id = -7.50000022... exactly
    const x = block([-24, -22.5]);
    assert.equal(quantizeQ4_0(x)[3] & 15, 1); // fround(-7.5000002) = -7.5, + 8.5 = 1.0
    assert.equal(quantizeQ4_0(x, { fma: true })[3] & 15, 0); // 0.99999978 truncates to 0
  });

  test('random blocks equal the naive reference bit for bit; dequantize matches', () => {
    const r = rng(7);
    const n = 32 * 600;
    const x = new Float32Array(n);
    for (let b = 0; b < n / 32; b++) {
      const scale = 2 ** Math.floor(r.uniform() * 24 - 12);
      x.set(r.normal(32, scale), b * 32);
      if (b % 5 === 0) {
        // exact ties: multiples of d/2 for a block whose max is -8 * 2^k
        x[b * 32] = -8 * scale;
        for (let j = 1; j < 32; j++) x[b * 32 + j] = (Math.floor(r.uniform() * 32) - 16) * 0.5 * scale;
      }
    }
    const q8 = quantizeQ8_0(x);
    assert.deepEqual(q8, naiveBlocks(x, naiveQ8_0));
    assert.deepEqual(dequantizeQ8_0(q8), naiveDequant(q8, 'q8_0'));
    for (const fma of [false, true]) {
      const q4 = quantizeQ4_0(x, { fma });
      assert.deepEqual(
        q4,
        naiveBlocks(x, (b) => naiveQ4_0(b, fma)),
      );
      assert.deepEqual(dequantizeQ4_0(q4), naiveDequant(q4, 'q4_0'));
    }
    const f16 = quantizeF16(x);
    for (let i = 0; i < 2000; i++) assert.equal(f16[2 * i] | (f16[2 * i + 1] << 8), naiveF16Bits(x[i]));
    assert.deepEqual(
      dequantizeF16(f16).subarray(0, 50),
      Float32Array.from(x.subarray(0, 50), (v) => naiveF16Value(naiveF16Bits(v))),
    );
  });

  test('lengths that are not a multiple of 32 are refused', () => {
    assert.throws(() => quantizeQ8_0(new Float32Array(33)), RangeError);
    assert.throws(() => quantizeQ4_0(new Float32Array(16)), RangeError);
  });
});

// ---------------------------------------------------------------------------------------------
// naive GGUF parser

type Plain = number | bigint | boolean | string | Plain[];
interface NaiveTensor {
  name: string;
  dims: number[];
  type: number;
  offset: number;
}
interface NaiveGguf {
  version: number;
  kv: Map<string, { type: number; value: Plain }>;
  tensors: NaiveTensor[];
  dataStart: number;
  buf: Buffer;
}

function naiveParse(file: string): NaiveGguf {
  const buf = fs.readFileSync(file);
  let p = 0;
  /** advances past n bytes and returns where they start */
  const at = (n: number) => {
    p += n;
    return p - n;
  };
  const u32 = () => buf.readUInt32LE(at(4));
  const u64 = () => Number(buf.readBigUInt64LE(at(8)));
  const str = () => {
    const n = u64();
    return buf.toString('utf8', at(n), p);
  };
  const val = (type: number): Plain => {
    const readers: Record<number, () => Plain> = {
      0: () => buf.readUInt8(at(1)),
      1: () => buf.readInt8(at(1)),
      2: () => buf.readUInt16LE(at(2)),
      3: () => buf.readInt16LE(at(2)),
      4: u32,
      5: () => buf.readInt32LE(at(4)),
      6: () => buf.readFloatLE(at(4)),
      7: () => buf.readUInt8(at(1)) === 1,
      8: str,
      10: () => buf.readBigUInt64LE(at(8)),
      11: () => buf.readBigInt64LE(at(8)),
      12: () => buf.readDoubleLE(at(8)),
      9: () => {
        const itemType = u32();
        const n = u64();
        return Array.from({ length: n }, () => val(itemType));
      },
    };
    return readers[type]();
  };
  assert.equal(buf.toString('latin1', 0, 4), 'GGUF');
  p = 4;
  const version = u32();
  const nTensors = u64();
  const nKv = u64();
  const kv = new Map<string, { type: number; value: Plain }>();
  for (let i = 0; i < nKv; i++) {
    const key = str();
    const type = u32();
    kv.set(key, { type, value: val(type) });
  }
  const tensors: NaiveTensor[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    const dims = Array.from({ length: nd }, u64);
    tensors.push({ name, dims, type: u32(), offset: u64() });
  }
  const align = (kv.get('general.alignment')?.value as number | undefined) ?? 32;
  const dataStart = Math.ceil(p / align) * align;
  for (let i = p; i < dataStart; i++) assert.equal(buf[i], 0, 'header padding is zeros');
  return { version, kv, tensors, dataStart, buf };
}

function tensorBytes(g: NaiveGguf, name: string): Uint8Array {
  const t = g.tensors.find((x) => x.name === name);
  assert.ok(t, `tensor ${name} present`);
  const count = t.dims.reduce((a, b) => a * b, 1);
  const size = {
    0: count * 4,
    1: count * 2,
    2: (count / 32) * 18,
    6: (count / 32) * 22,
    7: (count / 32) * 24,
    8: (count / 32) * 34,
    12: (count / 256) * 144,
    13: (count / 256) * 176,
    14: (count / 256) * 210,
  }[t.type];
  assert.ok(size !== undefined, `known type ${t.type}`);
  const start = g.dataStart + t.offset;
  assert.ok(start + size <= g.buf.length, `${name} inside the file`);
  return new Uint8Array(g.buf.subarray(start, start + size));
}

/** GGUF rows h*hd + 2i + j back to the HF order h*hd + j*hd/2 + i. */
function unpermute(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const hd = rows / heads;
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) {
    const h = Math.floor(r / hd);
    const i = Math.floor((r % hd) / 2);
    const j = r % 2;
    const hfRow = h * hd + j * (hd / 2) + i;
    out.set(w.subarray(r * cols, (r + 1) * cols), hfRow * cols);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// (b) export of llama-tiny

const T = { F32: 0, F16: 1, Q4_0: 2, Q5_0: 6, Q5_1: 7, Q8_0: 8, Q4_K: 12, Q5_K: 13, Q6_K: 14 };
const EXPORTED = ['q8_0', 'q4_0', 'q4_k_s', 'q4_k_m', 'q5_k_m', 'f16'] as const;
const config = JSON.parse(fs.readFileSync(`${TINY}/config.json`, 'utf8'));
const tokJson = JSON.parse(fs.readFileSync(`${TINY}/tokenizer.json`, 'utf8'));

describe('exportGguf on llama-tiny', () => {
  const files = {} as Record<GgufExportType, NaiveGguf>;
  let source: LlamaModel;

  before(async () => {
    source = loadLlama(TINY, cpu);
    for (const type of EXPORTED) {
      const out = path.join(ROOT, `tiny-${type}.gguf`);
      const summary = await exportGguf(TINY, out, { type });
      assert.equal(summary.tensors, 39);
      assert.equal(summary.source, 'full precision');
      // ffn_down's rows of 704 do not fit the K-types' 256: Q5_0 (from Q4_K) or Q5_1 (from Q5_K), and
      // Q8_0 (from Q6_K) in the _m mixes' use_more_bits layers 2, 3
      const small = type === 'q5_k_m' ? 'Q5_1' : 'Q5_0';
      const downs = [0, 1, 2, 3].map((i) => ({
        tensor: `blk.${i}.ffn_down.weight`,
        type: i < 2 || type === 'q4_k_s' ? small : 'Q8_0',
      }));
      assert.deepEqual(summary.fallbacks, type.startsWith('q4_k') || type === 'q5_k_m' ? downs : []);
      assert.equal(summary.bytes, fs.statSync(out).size);
      files[type] = naiveParse(out);
    }
  });

  test('metadata matches config.json and tokenizer.json', () => {
    const g = files.q8_0;
    assert.equal(g.version, 3);
    const meta = (k: string) => g.kv.get(k)?.value;
    const typeOf = (k: string) => g.kv.get(k)?.type;
    assert.equal(meta('general.architecture'), 'llama');
    assert.equal(meta('general.name'), 'llama-tiny');
    assert.equal(meta('general.alignment'), 32);
    assert.equal(meta('general.quantization_version'), 2);
    const u32 = {
      'llama.block_count': config.num_hidden_layers,
      'llama.context_length': config.max_position_embeddings,
      'llama.embedding_length': config.hidden_size,
      'llama.feed_forward_length': config.intermediate_size,
      'llama.attention.head_count': config.num_attention_heads,
      'llama.attention.head_count_kv': config.num_key_value_heads,
      'llama.rope.dimension_count': config.head_dim,
      'llama.vocab_size': config.vocab_size,
      'tokenizer.ggml.bos_token_id': config.bos_token_id,
      'tokenizer.ggml.eos_token_id': config.eos_token_id,
    };
    for (const [k, v] of Object.entries(u32)) {
      assert.equal(meta(k), v, k);
      assert.equal(typeOf(k), 4, `${k} is uint32`);
    }
    assert.equal(meta('llama.attention.layer_norm_rms_epsilon'), fr(config.rms_norm_eps));
    assert.equal(meta('llama.rope.freq_base'), config.rope_parameters.rope_theta);
    assert.equal(typeOf('llama.rope.freq_base'), 6);
    assert.equal(files.q8_0.kv.get('general.file_type')?.value, 7);
    assert.equal(files.q4_0.kv.get('general.file_type')?.value, 2);
    assert.equal(files.q4_k_s.kv.get('general.file_type')?.value, 14);
    assert.equal(files.q4_k_m.kv.get('general.file_type')?.value, 15);
    assert.equal(files.q5_k_m.kv.get('general.file_type')?.value, 17);
    assert.equal(files.f16.kv.get('general.file_type')?.value, 1);

    assert.equal(meta('tokenizer.ggml.model'), 'gpt2');
    assert.equal(meta('tokenizer.ggml.pre'), 'gpt-2');
    assert.equal(meta('tokenizer.ggml.add_bos_token'), true);
    assert.equal(meta('tokenizer.ggml.add_eos_token'), false);
    const tokens = meta('tokenizer.ggml.tokens') as string[];
    const types = meta('tokenizer.ggml.token_type') as number[];
    assert.equal(tokens.length, config.vocab_size);
    assert.equal(types.length, config.vocab_size);
    assert.equal(tokens[0], '<|begin_of_text|>');
    assert.equal(types[0], 3); // control
    const added = new Set((tokJson.added_tokens as { id: number }[]).map((t) => t.id));
    for (const [tok, id] of Object.entries(tokJson.model.vocab as Record<string, number>)) {
      assert.equal(tokens[id], tok);
      assert.equal(types[id], added.has(id) ? 3 : 1, tok);
    }
    const merges = meta('tokenizer.ggml.merges') as string[];
    assert.equal(merges.length, tokJson.model.merges.length);
    assert.equal(merges[0], tokJson.model.merges[0].join(' '));
    assert.equal(merges.at(-1), tokJson.model.merges.at(-1).join(' '));
  });

  test('tensor names, dims (fastest first), types and aligned offsets', () => {
    const expected = (type: (typeof EXPORTED)[number]) => {
      const lin = { q8_0: T.Q8_0, q4_0: T.Q4_0, q4_k_s: T.Q4_K, q4_k_m: T.Q4_K, q5_k_m: T.Q5_K, f16: T.F16 }[
        type
      ];
      const out = type === 'q8_0' || type === 'f16' ? lin : T.Q6_K;
      const mix = type === 'q4_k_m' || type === 'q5_k_m';
      // the _m mixes over 4 layers: use_more_bits picks layers 2 (every third after the first eighth) and 3
      // (the last eighth); Q4_K_S: attn_v of layers 0-3 in Q5_K, ffn_down of the first eighth (none of 4)
      const attnV = (i: number) => (mix && i >= 2 ? T.Q6_K : type === 'q4_k_s' ? T.Q5_K : lin);
      const small = type === 'q5_k_m' ? T.Q5_1 : T.Q5_0;
      const down = (i: number) => (lin === T.Q4_K || lin === T.Q5_K ? (mix && i >= 2 ? T.Q8_0 : small) : lin);
      const { hidden_size: d, intermediate_size: ff, vocab_size: v, head_dim: hd } = config;
      const kv = config.num_key_value_heads * hd;
      const list: [string, number[], number][] = [['token_embd.weight', [d, v], lin]];
      for (let i = 0; i < config.num_hidden_layers; i++) {
        list.push(
          [`blk.${i}.attn_norm.weight`, [d], T.F32],
          [`blk.${i}.attn_q.weight`, [d, config.num_attention_heads * hd], lin],
          [`blk.${i}.attn_k.weight`, [d, kv], lin],
          [`blk.${i}.attn_v.weight`, [d, kv], attnV(i)],
          [`blk.${i}.attn_output.weight`, [config.num_attention_heads * hd, d], lin],
          [`blk.${i}.ffn_norm.weight`, [d], T.F32],
          [`blk.${i}.ffn_gate.weight`, [d, ff], lin],
          [`blk.${i}.ffn_up.weight`, [d, ff], lin],
          [`blk.${i}.ffn_down.weight`, [ff, d], down(i)],
        );
      }
      list.push(['output_norm.weight', [d], T.F32], ['output.weight', [d, v], out]);
      return list;
    };
    for (const type of EXPORTED) {
      const g = files[type];
      const got = g.tensors.map((t) => [t.name, t.dims, t.type]);
      assert.deepEqual(
        new Set(got.map((x) => JSON.stringify(x))),
        new Set(expected(type).map((x) => JSON.stringify(x))),
      );
      let end = 0;
      for (const t of g.tensors) {
        assert.equal(t.offset % 32, 0, `${t.name} offset aligned`);
        assert.ok(t.offset >= end, `${t.name} does not overlap the previous tensor`);
        end = t.offset + tensorBytes(g, t.name).length;
      }
      assert.equal(g.buf.length, g.dataStart + Math.ceil(end / 32) * 32);
    }
  });

  test('weights equal the naive quantizers on the source; q and k are permuted for RoPE', async () => {
    const L0 = source.layers[0];
    const v = await cpu.read(L0.linears.v_proj.weight);
    assert.deepEqual(
      dequantizeQ8_0(tensorBytes(files.q8_0, 'blk.0.attn_v.weight')),
      naiveDequant(naiveBlocks(v, naiveQ8_0), 'q8_0'),
    );
    assert.deepEqual(
      tensorBytes(files.q4_0, 'blk.0.attn_v.weight'),
      naiveBlocks(v, (b) => naiveQ4_0(b)),
    );
    const head = await cpu.read(source.lmHead);
    assert.deepEqual(tensorBytes(files.q4_0, 'output.weight'), quantizeQ6_K(head));
    assert.deepEqual(tensorBytes(files.q4_k_m, 'output.weight'), quantizeQ6_K(head));
    // Q4_K_M: layer 0's attn_v in Q4_K, layer 3's in Q6_K, ffn_down in the fallbacks Q5_0 / Q8_0
    assert.deepEqual(tensorBytes(files.q4_k_m, 'blk.0.attn_v.weight'), quantizeQ4_K(v));
    const v3 = await cpu.read(source.layers[3].linears.v_proj.weight);
    assert.deepEqual(tensorBytes(files.q4_k_m, 'blk.3.attn_v.weight'), quantizeQ6_K(v3));
    const down = (i: number) => cpu.read(source.layers[i].linears.down_proj.weight);
    assert.deepEqual(tensorBytes(files.q4_k_m, 'blk.0.ffn_down.weight'), quantizeQ5_0(await down(0)));
    assert.deepEqual(
      tensorBytes(files.q4_k_m, 'blk.3.ffn_down.weight'),
      naiveBlocks(await down(3), naiveQ8_0),
    );
    // Q5_K_M: Q5_K where Q4_K_M has Q4_K, Q5_1 where it has Q5_0; Q4_K_S: attn_v in Q5_K
    assert.deepEqual(tensorBytes(files.q5_k_m, 'blk.0.attn_v.weight'), quantizeQ5_K(v));
    assert.deepEqual(tensorBytes(files.q5_k_m, 'blk.3.attn_v.weight'), quantizeQ6_K(v3));
    assert.deepEqual(tensorBytes(files.q5_k_m, 'blk.0.ffn_down.weight'), quantizeQ5_1(await down(0)));
    assert.deepEqual(tensorBytes(files.q4_k_s, 'blk.3.attn_v.weight'), quantizeQ5_K(v3));

    for (const [name, heads] of [
      ['attn_q', config.num_attention_heads],
      ['attn_k', config.num_key_value_heads],
    ] as const) {
      const w = L0.linears[name === 'attn_q' ? 'q_proj' : 'k_proj'].weight;
      const [rows, cols] = w.shape;
      const src = await cpu.read(w);
      const q8 = dequantizeQ8_0(tensorBytes(files.q8_0, `blk.0.${name}.weight`));
      assert.notDeepEqual(q8, naiveDequant(naiveBlocks(src, naiveQ8_0), 'q8_0'), `${name} is permuted`);
      assert.deepEqual(unpermute(q8, rows, cols, heads), naiveDequant(naiveBlocks(src, naiveQ8_0), 'q8_0'));
      const f16 = dequantizeF16(tensorBytes(files.f16, `blk.0.${name}.weight`));
      assert.deepEqual(
        unpermute(f16, rows, cols, heads),
        Float32Array.from(src, (x) => naiveF16Value(naiveF16Bits(x))),
      );
    }
    const norm = new Float32Array(tensorBytes(files.q8_0, 'blk.3.ffn_norm.weight').slice().buffer);
    assert.deepEqual(norm, await cpu.read(source.layers[3].postNorm));
    const embed = dequantizeF16(tensorBytes(files.f16, 'token_embd.weight'));
    assert.deepEqual(
      embed,
      Float32Array.from(await cpu.read(source.embedTokens), (x) => naiveF16Value(naiveF16Bits(x))),
    );
  });

  test('readGguf agrees with the naive parser', () => {
    const file = path.join(ROOT, 'tiny-q4_0.gguf');
    const g = readGguf(file);
    const naive = files.q4_0;
    assert.equal(g.dataOffset, naive.dataStart);
    assert.deepEqual(
      g.tensors.map((t) => [t.name, t.dims, t.type, t.offset]),
      naive.tensors.map((t) => [t.name, t.dims, t.type, t.offset]),
    );
    assert.deepEqual([...g.metadata.keys()], [...naive.kv.keys()]);
    assert.deepEqual(
      g.metadata.get('tokenizer.ggml.merges')?.value,
      naive.kv.get('tokenizer.ggml.merges')?.value,
    );
    assert.deepEqual(readGgufTensor(g, 'blk.2.ffn_up.weight'), tensorBytes(naive, 'blk.2.ffn_up.weight'));
  });

  test('an llmq weight-only checkpoint exports its dequantized weights', async () => {
    const recipe = resolveRecipe('rtn-w4');
    const { model } = await loadModel(TINY, cpu, { recipe });
    const dir = path.join(ROOT, 'rtn-w4');
    await saveQuantized(model, recipe, testManifest(TINY), dir, false);
    const out = path.join(ROOT, 'rtn.gguf');
    const summary = await exportGguf(dir, out, { type: 'q8_0' });
    assert.equal(summary.source, 'llmq rtn-w4');
    const w = await cpu.read(model.layers[1].linears.down_proj.weight);
    assert.deepEqual(tensorBytes(naiveParse(out), 'blk.1.ffn_down.weight'), naiveBlocks(w, naiveQ8_0));
  });
});

// ---------------------------------------------------------------------------------------------
// variants: tied embeddings, attention biases, llama3 RoPE, the Llama 3 pre-tokenizer

/** llama-tiny with changed config.json / tokenizer.json; the weights linked unless given. */
function variant(name: string, cfg: object, tok: object, tensors?: TensorToWrite[]): string {
  const dir = path.join(ROOT, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, ...cfg }));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({ ...tokJson, ...tok }));
  fs.copyFileSync(`${TINY}/tokenizer_config.json`, path.join(dir, 'tokenizer_config.json'));
  if (tensors) writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  else fs.symlinkSync(`${TINY}/model.safetensors`, path.join(dir, 'model.safetensors'));
  return dir;
}

describe('model variants', () => {
  test('tied embeddings, q/k/v/o biases, llama3 rope_freqs and the llama-bpe pre-tokenizer', async () => {
    const ck = openCheckpoint(TINY);
    const r = rng(3);
    const tensors: TensorToWrite[] = ck
      .names()
      .filter((n) => n !== 'lm_head.weight')
      .map((n) => ({ name: n, ...ck.read(n) }));
    ck.close();
    const kvRows = config.num_key_value_heads * config.head_dim;
    const qRows = config.num_attention_heads * config.head_dim;
    for (let i = 0; i < config.num_hidden_layers; i++)
      for (const [lin, rows] of [
        ['q_proj', qRows],
        ['k_proj', kvRows],
        ['v_proj', kvRows],
        ['o_proj', config.hidden_size],
      ] as const)
        tensors.push({
          name: `model.layers.${i}.self_attn.${lin}.bias`,
          dtype: 'F32',
          shape: [rows],
          data: r.normal(rows),
        });
    const rope = {
      rope_type: 'llama3',
      rope_theta: 500000,
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 1024,
    };
    const dir = variant(
      'tied',
      { tie_word_embeddings: true, attention_bias: true, rope_parameters: rope },
      { pre_tokenizer: LLAMA3_PRE_TOKENIZER },
      tensors,
    );
    const out = path.join(ROOT, 'tied.gguf');
    const summary = await exportGguf(dir, out, { type: 'q4_0' });
    assert.equal(summary.tokenizer.pre, 'llama-bpe');
    const g = naiveParse(out);
    assert.equal(g.kv.get('tokenizer.ggml.pre')?.value, 'llama-bpe');
    const byName = new Map(g.tensors.map((t) => [t.name, t]));
    assert.equal(byName.has('output.weight'), false, 'tied: llama.cpp reuses token_embd');
    assert.equal(byName.get('token_embd.weight')?.type, T.Q6_K, 'tied token_embd plays output.weight');
    assert.equal(g.tensors.length, 39 + 16);

    // rope_freqs: 1 for short wavelengths, factor for long ones, the smooth blend between
    const freqs = new Float32Array(tensorBytes(g, 'rope_freqs.weight').slice().buffer);
    assert.equal(freqs.length, config.head_dim / 2);
    for (let k = 0; k < freqs.length; k++) {
      const wavelen = 2 * Math.PI * 500000 ** ((2 * k) / config.head_dim); // 2 pi / inv_freq
      const smooth = (1024 / wavelen - 1) / (4 - 1);
      const want = wavelen < 1024 / 4 ? 1 : wavelen > 1024 ? 8 : 1 / ((1 - smooth) / 8 + smooth);
      assert.ok(Math.abs(freqs[k] - want) <= 1e-6 * want, `rope_freqs[${k}] ${freqs[k]} vs ${want}`);
    }
    assert.ok(freqs.some((f) => f === 1) && freqs.some((f) => f === 8) && freqs.some((f) => f > 1 && f < 8));

    const bias = (n: string) => tensors.find((t) => t.name === n)?.data as Float32Array;
    const f32 = (n: string) => new Float32Array(tensorBytes(g, n).slice().buffer);
    assert.deepEqual(
      unpermute(f32('blk.1.attn_q.bias'), qRows, 1, config.num_attention_heads),
      bias('model.layers.1.self_attn.q_proj.bias'),
    );
    assert.deepEqual(
      unpermute(f32('blk.1.attn_k.bias'), kvRows, 1, config.num_key_value_heads),
      bias('model.layers.1.self_attn.k_proj.bias'),
    );
    assert.deepEqual(f32('blk.1.attn_v.bias'), bias('model.layers.1.self_attn.v_proj.bias'));
    assert.deepEqual(f32('blk.1.attn_output.bias'), bias('model.layers.1.self_attn.o_proj.bias'));
  });

  test('what GGUF export does not cover is refused up front', async () => {
    const out = path.join(ROOT, 'never.gguf');
    const spm = variant('spm', {}, { model: { ...tokJson.model, byte_fallback: true } });
    await rejectsUser(exportGguf(spm, out, { type: 'f16' }), /only byte-level BPE.*byte_fallback true/);
    const pre = variant('pre', {}, { pre_tokenizer: { type: 'Whitespace' } });
    await rejectsUser(
      exportGguf(pre, out, { type: 'f16' }),
      /pre_tokenizer .*Whitespace.* is not one llama.cpp knows/,
    );
    const qwen = variant('qwen', { model_type: 'qwen2' }, {});
    await rejectsUser(exportGguf(qwen, out, { type: 'f16' }), /qwen2 cannot be exported to GGUF/);
    const yarn = variant('yarn', { rope_parameters: { rope_type: 'yarn', rope_theta: 1e4, factor: 4 } }, {});
    await rejectsUser(exportGguf(yarn, out, { type: 'f16' }), /rope type "yarn" cannot be exported/);
    assert.equal(fs.existsSync(out), false);
  });
});

// ---------------------------------------------------------------------------------------------
// (c) refusals and malformed files

async function rejectsUser(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof UserError, `UserError expected, got ${String(e)}`);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
}

function throwsUser(f: () => unknown, pattern: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof UserError, `UserError expected, got ${String(e)}`);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
}

describe('refusals', () => {
  test('an existing output needs force; a failed export leaves no file behind', async () => {
    const out = path.join(ROOT, 'exists.gguf');
    fs.writeFileSync(out, 'keep');
    await rejectsUser(exportGguf(TINY, out, { type: 'f16' }), /already exists.*--force/);
    assert.equal(fs.readFileSync(out, 'utf8'), 'keep');
    const failing = exportGguf(TINY, out, {
      type: 'f16',
      force: true,
      onProgress: (done) => {
        if (done === 3) throw new Error('interrupted');
      },
    });
    await assert.rejects(failing, /interrupted/);
    assert.equal(fs.readFileSync(out, 'utf8'), 'keep');
    assert.deepEqual(
      fs.readdirSync(ROOT).filter((f) => f.includes('.tmp-')),
      [],
    );
    await exportGguf(TINY, out, { type: 'f16', force: true });
    assert.equal(readGguf(out).tensors.length, 39);
    await rejectsUser(
      exportGguf(TINY, out, { type: 'tq1_0' as GgufExportType, force: true }),
      /tq1_0.*not supported/,
    );
  });

  test('an llmq W8A8 checkpoint is refused: GGUF has no activation quantization', async () => {
    const recipe = resolveRecipe('rtn-w8a8');
    const { model } = await loadModel(TINY, cpu, { recipe });
    const dir = path.join(ROOT, 'w8a8');
    await saveQuantized(model, recipe, testManifest(TINY), dir, false);
    await rejectsUser(
      exportGguf(dir, path.join(ROOT, 'w8a8.gguf'), { type: 'q8_0' }),
      /rtn-w8a8 quantizes activations/,
    );
    assert.equal(fs.existsSync(path.join(ROOT, 'w8a8.gguf')), false);
  });

  test('malformed GGUF files give one-line errors', () => {
    const good = fs.readFileSync(path.join(ROOT, 'tiny-q8_0.gguf'));
    const write = (name: string, bytes: Uint8Array) => {
      const f = path.join(ROOT, name);
      fs.writeFileSync(f, bytes);
      return f;
    };
    const badMagic = Buffer.from(good);
    badMagic.write('GGUX', 0, 'latin1');
    throwsUser(() => readGguf(write('magic.gguf', badMagic)), /not a GGUF file/);
    const badVersion = Buffer.from(good.subarray(0, 4096));
    badVersion.writeUInt32LE(7, 4);
    throwsUser(() => readGguf(write('version.gguf', badVersion)), /unsupported GGUF version 7/);
    throwsUser(
      () => readGguf(write('cut.gguf', good.subarray(0, 5000))),
      /truncated or corrupt.*tokens claims 8192 items/,
    );
    throwsUser(
      () => readGguf(write('cut2.gguf', good.subarray(0, 40))),
      /truncated GGUF file \(metadata key 0/,
    );
    throwsUser(() => readGguf(write('tiny.gguf', good.subarray(0, 10))), /not a GGUF file \(10 bytes/);
    throwsUser(
      () => readGguf(write('short-data.gguf', good.subarray(0, good.length - 100))),
      /runs past the end/,
    );
    const badType = Buffer.from(good);
    badType.writeUInt32LE(99, 4 + 4 + 8 + 8 + 8 + 'general.architecture'.length);
    throwsUser(() => readGguf(write('vtype.gguf', badType)), /unknown value type 99/);
    throwsUser(() => readGguf(path.join(ROOT, 'missing.gguf')), /no such file/);
  });
});

describe('GGUF container', () => {
  test('typed metadata and arrays round-trip through writeGguf / readGguf and the naive parser', () => {
    const file = path.join(ROOT, 'kv.gguf');
    const meta = new Map([
      ['a.u8', { type: 'uint8', value: 200 }],
      ['a.i8', { type: 'int8', value: -5 }],
      ['a.u16', { type: 'uint16', value: 65000 }],
      ['a.i16', { type: 'int16', value: -3000 }],
      ['a.u32', gguf.u32(4000000000)],
      ['a.i32', gguf.i32(-7)],
      ['a.f32', gguf.f32(0.1)],
      ['a.u64', gguf.u64(2 ** 40)],
      ['a.i64', { type: 'int64', value: -(2 ** 40) }],
      ['a.f64', { type: 'float64', value: 0.1 }],
      ['a.bool', gguf.bool(true)],
      ['a.str', gguf.str('héllo')],
      ['a.strs', gguf.strings(['x', '', 'Ġt'])],
      ['a.ints', gguf.i32s([1, -2, 3])],
      ['a.floats', gguf.f32s([0.5, -1.25])],
    ] as const);
    const data = Uint8Array.from({ length: 34 * 2 }, (_, i) => i);
    writeGguf(file, new Map(meta), [
      { name: 'w', dims: [64], type: T.Q8_0, data },
      { name: 'n', dims: [3], type: T.F32, data: new Uint8Array(new Float32Array([1, 2, 3]).buffer) },
    ]);
    const g = readGguf(file);
    const naive = naiveParse(file);
    const expected: Record<string, unknown> = {
      'a.u8': 200,
      'a.i8': -5,
      'a.u16': 65000,
      'a.i16': -3000,
      'a.u32': 4000000000,
      'a.i32': -7,
      'a.f32': fr(0.1),
      'a.u64': 2 ** 40,
      'a.i64': -(2 ** 40),
      'a.f64': 0.1,
      'a.bool': true,
      'a.str': 'héllo',
      'a.strs': ['x', '', 'Ġt'],
      'a.ints': [1, -2, 3],
      'a.floats': [0.5, -1.25],
      'general.alignment': 32,
    };
    for (const [k, v] of Object.entries(expected)) {
      assert.deepEqual(g.metadata.get(k)?.value, v, k);
      const n = naive.kv.get(k)?.value;
      assert.deepEqual(typeof n === 'bigint' ? Number(n) : n, v, `naive ${k}`);
    }
    assert.deepEqual(readGgufTensor(g, 'w'), data);
    assert.deepEqual(
      g.tensors.map((t) => t.offset),
      [0, 96],
    );
    assert.equal(fs.statSync(file).size, g.dataOffset + 96 + 32);
  });

  test('the writer checks order, sizes and names, and refuses an existing file', () => {
    const file = path.join(ROOT, 'w.gguf');
    const w = new GgufWriter(file, new Map(), [{ name: 'a', dims: [32], type: T.Q8_0 }]);
    assert.throws(() => w.write('b', new Uint8Array(34)), /expected tensor a next/);
    assert.throws(() => w.write('a', new Uint8Array(30)), /has 30 bytes.*34/);
    w.abort();
    assert.equal(fs.existsSync(file), false);
    throwsUser(
      () => new GgufWriter(file, new Map(), [{ name: 'a', dims: [33], type: T.Q8_0 }]),
      /Q8_0 cannot hold dims \[33\]/,
    );
    throwsUser(
      () =>
        new GgufWriter(file, new Map(), [
          { name: 'a', dims: [4], type: T.F32 },
          { name: 'a', dims: [4], type: T.F32 },
        ]),
      /declared twice/,
    );
    fs.writeFileSync(file, 'x');
    throwsUser(() => new GgufWriter(file, new Map(), []), /already exists/);
    assert.deepEqual(
      fs.readdirSync(ROOT).filter((f) => f.includes('.tmp-')),
      [],
    );
  });
});

test('llmq export --to gguf-q8_0 writes the file exportGguf writes; --q4-fma only with gguf-q4_0', async () => {
  const { exportCommand } = await import('../src/cli/export.ts');
  const viaCli = path.join(ROOT, 'cli.gguf');
  const direct = path.join(ROOT, 'direct.gguf');
  const write = process.stdout.write;
  let printed = '';
  process.stdout.write = ((s: string) => {
    printed += s;
    return true;
  }) as typeof process.stdout.write;
  try {
    await exportCommand([TINY, '--to', 'gguf-q8_0', '--out', viaCli, '--json']);
  } finally {
    process.stdout.write = write;
  }
  assert.equal(JSON.parse(printed).type, 'q8_0');
  await exportGguf(TINY, direct, { type: 'q8_0' });
  assert.ok(fs.readFileSync(viaCli).equals(fs.readFileSync(direct)));
  await assert.rejects(
    exportCommand([TINY, '--to', 'gptq', '--out', path.join(ROOT, 'x'), '--q4-fma']),
    /--q4-fma applies to --to gguf-q4_0 only/,
  );
});
