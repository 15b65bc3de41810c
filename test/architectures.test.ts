/**
 * The forward pass on architectures and layouts the shared models do not cover: small random Qwen2,
 * Mistral, sharded bf16 Llama and f16 Llama checkpoints, each checked against a naive float64
 * forward written here from the transformers modeling code's math (not from src/).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import {
  f32ToBf16,
  f32ToF16,
  type TensorToWrite,
  writeSafetensors,
  writeShardedCheckpoint,
} from '../src/io/safetensors.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { rng } from './helpers.ts';

const cpu = new CpuBackend();
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-arch-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

type Rope =
  | { type: 'default' }
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; low: number; high: number; originalMax: number };

interface Arch {
  hidden: number;
  ffn: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  theta: number;
  eps: number;
  rope: Rope;
  qkvBias: boolean;
  oBias: boolean;
  tied: boolean;
}

/** Weights as plain numbers, keyed by HF tensor name; shapes are implied by Arch. */
type Weights = Map<string, { shape: number[]; values: Float32Array }>;

/**
 * Random weights whose values are exact in `dtype` (small integers times a power of two), so the
 * naive forward and the model see the same numbers whatever the storage type.
 */
function randomWeights(a: Arch, seed: number, dtype: 'F32' | 'BF16' | 'F16'): Weights {
  const r = rng(seed);
  // bf16 keeps 8 significant bits, f16 11: quantize to a grid coarse enough for both
  const grid = dtype === 'F32' ? 0 : 64;
  const w: Weights = new Map();
  const add = (name: string, shape: number[], std: number, mean = 0) => {
    const n = shape.reduce((x, y) => x * y, 1);
    const v = r.normal(n, std);
    for (let i = 0; i < n; i++) {
      let x = v[i] + mean;
      if (grid) {
        // 7 fraction bits; tiny values flushed to 0 (f16 subnormals would lose bits)
        const e = 2 ** Math.floor(Math.log2(Math.abs(x)));
        x = Math.abs(x) < 2 ** -12 ? 0 : (Math.round((x / e) * grid) / grid) * e;
      }
      v[i] = x;
    }
    w.set(name, { shape, values: v });
  };
  const { hidden: d, ffn, headDim: hd } = a;
  add('model.embed_tokens.weight', [a.vocab, d], 1);
  for (let l = 0; l < a.layers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [d], 0.1, 1);
    add(`${p}.post_attention_layernorm.weight`, [d], 0.1, 1);
    const proj: [string, number, number][] = [
      ['self_attn.q_proj', a.heads * hd, d],
      ['self_attn.k_proj', a.kvHeads * hd, d],
      ['self_attn.v_proj', a.kvHeads * hd, d],
      ['self_attn.o_proj', d, a.heads * hd],
      ['mlp.gate_proj', ffn, d],
      ['mlp.up_proj', ffn, d],
      ['mlp.down_proj', d, ffn],
    ];
    for (const [name, out, inp] of proj) {
      // q/k a bit larger than 1/sqrt(in) so attention is far from uniform
      const gain = name.endsWith('q_proj') || name.endsWith('k_proj') ? 2 : 1;
      add(`${p}.${name}.weight`, [out, inp], gain / Math.sqrt(inp));
      const biased = name.startsWith('self_attn.o') ? a.oBias : name.startsWith('self_attn') && a.qkvBias;
      if (biased) add(`${p}.${name}.bias`, [out], 0.5);
    }
  }
  add('model.norm.weight', [d], 0.1, 1);
  if (!a.tied) add('lm_head.weight', [a.vocab, d], 1 / Math.sqrt(d));
  return w;
}

function toWrite(w: Weights, dtype: 'F32' | 'BF16' | 'F16'): TensorToWrite[] {
  return [...w].map(([name, { shape, values }]) => ({
    name,
    dtype,
    shape,
    data: dtype === 'F32' ? values : dtype === 'BF16' ? f32ToBf16(values) : f32ToF16(values),
  }));
}

// ---------------------------------------------------------------------------------------------------
// Naive float64 forward

function invFrequencies(a: Arch): number[] {
  const half = a.headDim / 2;
  const base = Array.from({ length: half }, (_, i) => 1 / a.theta ** ((2 * i) / a.headDim));
  const rope = a.rope;
  if (rope.type === 'default') return base;
  if (rope.type === 'linear') return base.map((f) => f / rope.factor);
  // Llama 3.1: long wavelengths divided by factor, short ones kept, a linear blend in between
  return base.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < rope.originalMax / rope.high) return f;
    if (wavelen > rope.originalMax / rope.low) return f / rope.factor;
    const smooth = (rope.originalMax / wavelen - rope.low) / (rope.high - rope.low);
    return (1 - smooth) * (f / rope.factor) + smooth * f;
  });
}

/** y = W x (+ b) for one vector, W [out, in] row-major. */
function matvec(w: Weights, name: string, x: number[], bias?: boolean): number[] {
  const { shape, values } = w.get(`${name}.weight`)!;
  const [out, inp] = shape;
  const b = bias ? w.get(`${name}.bias`)!.values : undefined;
  const y: number[] = [];
  for (let o = 0; o < out; o++) {
    let s = b ? b[o] : 0;
    for (let i = 0; i < inp; i++) s += values[o * inp + i] * x[i];
    y.push(s);
  }
  return y;
}

function rmsNorm(x: number[], weight: Float32Array, eps: number): number[] {
  const meanSq = x.reduce((s, v) => s + v * v, 0) / x.length;
  const inv = 1 / Math.sqrt(meanSq + eps);
  return x.map((v, i) => v * inv * weight[i]);
}

/** rotate-half RoPE of every head of x at position pos. */
function rotate(x: number[], pos: number, headDim: number, inv: number[]): number[] {
  const out = x.slice();
  const half = headDim / 2;
  for (let h = 0; h < x.length; h += headDim) {
    for (let i = 0; i < half; i++) {
      const c = Math.cos(pos * inv[i]);
      const s = Math.sin(pos * inv[i]);
      const lo = x[h + i];
      const hi = x[h + i + half];
      out[h + i] = lo * c - hi * s;
      out[h + i + half] = hi * c + lo * s;
    }
  }
  return out;
}

function attention(q: number[][], k: number[][], v: number[][], a: Arch): number[][] {
  const hd = a.headDim;
  const perKv = a.heads / a.kvHeads;
  return q.map((qt, t) => {
    const out: number[] = [];
    for (let h = 0; h < a.heads; h++) {
      const kv = Math.floor(h / perKv) * hd;
      const scores: number[] = [];
      for (let s = 0; s <= t; s++) {
        let dot = 0;
        for (let i = 0; i < hd; i++) dot += qt[h * hd + i] * k[s][kv + i];
        scores.push(dot / Math.sqrt(hd));
      }
      const max = Math.max(...scores);
      const e = scores.map((x) => Math.exp(x - max));
      const total = e.reduce((x, y) => x + y, 0);
      for (let i = 0; i < hd; i++) {
        let acc = 0;
        for (let s = 0; s <= t; s++) acc += (e[s] / total) * v[s][kv + i];
        out.push(acc);
      }
    }
    return out;
  });
}

const silu = (x: number) => x / (1 + Math.exp(-x));

/** Logits [seq][vocab] of one sequence. */
function naiveForward(a: Arch, w: Weights, ids: number[]): number[][] {
  const inv = invFrequencies(a);
  const embed = w.get('model.embed_tokens.weight')!.values;
  let h = ids.map((id) => Array.from(embed.subarray(id * a.hidden, (id + 1) * a.hidden)));
  for (let l = 0; l < a.layers; l++) {
    const p = `model.layers.${l}`;
    const x = h.map((r) => rmsNorm(r, w.get(`${p}.input_layernorm.weight`)!.values, a.eps));
    const q = x.map((r, t) => rotate(matvec(w, `${p}.self_attn.q_proj`, r, a.qkvBias), t, a.headDim, inv));
    const k = x.map((r, t) => rotate(matvec(w, `${p}.self_attn.k_proj`, r, a.qkvBias), t, a.headDim, inv));
    const v = x.map((r) => matvec(w, `${p}.self_attn.v_proj`, r, a.qkvBias));
    const att = attention(q, k, v, a).map((r) => matvec(w, `${p}.self_attn.o_proj`, r, a.oBias));
    h = h.map((r, t) => r.map((val, i) => val + att[t][i]));
    const x2 = h.map((r) => rmsNorm(r, w.get(`${p}.post_attention_layernorm.weight`)!.values, a.eps));
    const mlp = x2.map((r) => {
      const gate = matvec(w, `${p}.mlp.gate_proj`, r);
      const up = matvec(w, `${p}.mlp.up_proj`, r);
      return matvec(
        w,
        `${p}.mlp.down_proj`,
        gate.map((g, i) => silu(g) * up[i]),
      );
    });
    h = h.map((r, t) => r.map((val, i) => val + mlp[t][i]));
  }
  const head = a.tied ? 'model.embed_tokens' : 'lm_head';
  return h.map((r) => matvec(w, head, rmsNorm(r, w.get('model.norm.weight')!.values, a.eps)));
}

// ---------------------------------------------------------------------------------------------------

/** Loads dir with LlamaModel, runs two sequences as one batch and compares with the naive forward. */
async function checkAgainstNaive(dir: string, a: Arch, w: Weights, seed: number): Promise<void> {
  const model = loadLlama(dir, cpu);
  const seqLen = 9;
  const r = rng(seed);
  const seqs = [0, 1].map(() => Array.from({ length: seqLen }, () => Math.floor(r.uniform() * a.vocab)));
  const logits = await cpu.read(model.forward(Int32Array.from(seqs.flat()), { batch: 2, seqLen }));
  assert.equal(logits.length, 2 * seqLen * a.vocab);
  seqs.forEach((ids, b) => {
    const want = naiveForward(a, w, ids).flat();
    let maxDiff = 0;
    let maxAbs = 0;
    want.forEach((v, i) => {
      maxDiff = Math.max(maxDiff, Math.abs(logits[b * seqLen * a.vocab + i] - v));
      maxAbs = Math.max(maxAbs, Math.abs(v));
    });
    assert.ok(maxAbs > 1, `sequence ${b}: logits too small to be a meaningful check (${maxAbs})`);
    assert.ok(maxDiff / maxAbs < 1e-5, `sequence ${b}: max |diff| ${maxDiff} vs max |logit| ${maxAbs}`);
  });
}

function writeConfig(dir: string, config: Record<string, unknown>): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
}

test('Qwen2: q/k/v biases, tied embeddings without lm_head, 7 heads over 1 kv head', async () => {
  const a: Arch = {
    hidden: 56,
    ffn: 96,
    layers: 2,
    heads: 7,
    kvHeads: 1,
    headDim: 8,
    vocab: 40,
    theta: 1_000_000,
    eps: 1e-6,
    rope: { type: 'default' },
    qkvBias: true,
    oBias: false,
    tied: true,
  };
  const dir = path.join(root, 'qwen2');
  writeConfig(dir, {
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    hidden_act: 'silu',
    hidden_size: 56,
    intermediate_size: 96,
    num_hidden_layers: 2,
    num_attention_heads: 7,
    num_key_value_heads: 1,
    vocab_size: 40,
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-6,
    rope_theta: 1_000_000,
    rope_scaling: null,
    tie_word_embeddings: true,
    use_sliding_window: false,
    sliding_window: 32768,
    torch_dtype: 'float32',
  });
  const w = randomWeights(a, 11, 'F32');
  writeSafetensors(path.join(dir, 'model.safetensors'), toWrite(w, 'F32'));
  assert.ok(!w.has('lm_head.weight'));
  await checkAgainstNaive(dir, a, w, 12);
});

test('Mistral: grouped-query attention with head_dim set apart from hidden_size / heads', async () => {
  const a: Arch = {
    hidden: 48,
    ffn: 80,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    headDim: 16,
    vocab: 37,
    theta: 10_000,
    eps: 1e-5,
    rope: { type: 'default' },
    qkvBias: false,
    oBias: false,
    tied: false,
  };
  const dir = path.join(root, 'mistral');
  writeConfig(dir, {
    architectures: ['MistralForCausalLM'],
    model_type: 'mistral',
    hidden_act: 'silu',
    hidden_size: 48,
    intermediate_size: 80,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    vocab_size: 37,
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    sliding_window: 4096,
    tie_word_embeddings: false,
    torch_dtype: 'float32',
  });
  const w = randomWeights(a, 21, 'F32');
  writeSafetensors(path.join(dir, 'model.safetensors'), toWrite(w, 'F32'));
  await checkAgainstNaive(dir, a, w, 22);
});

test('Llama sharded into 3 bf16 files with an index, Llama 3.1 rope_scaling', async () => {
  const a: Arch = {
    hidden: 64,
    ffn: 112,
    layers: 3,
    heads: 4,
    kvHeads: 2,
    headDim: 16,
    vocab: 50,
    theta: 10_000,
    eps: 1e-5,
    // wavelengths 2 pi theta^(2i/16): i=0 below 64/4 (kept), i=1,2 between (blended), i>=3 above 64 (scaled)
    rope: { type: 'llama3', factor: 8, low: 1, high: 4, originalMax: 64 },
    qkvBias: false,
    oBias: false,
    tied: false,
  };
  const dir = path.join(root, 'llama-sharded');
  writeConfig(dir, {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_act: 'silu',
    hidden_size: 64,
    intermediate_size: 112,
    num_hidden_layers: 3,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 50,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    rope_scaling: {
      rope_type: 'llama3',
      factor: 8.0,
      low_freq_factor: 1.0,
      high_freq_factor: 4.0,
      original_max_position_embeddings: 64,
    },
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
  });
  const w = randomWeights(a, 31, 'BF16');
  const tensors = toWrite(w, 'BF16');
  const total = tensors.reduce((s, t) => s + t.data.byteLength, 0);
  const files = writeShardedCheckpoint(dir, tensors, Math.ceil(total / 2.5));
  assert.equal(files.length, 3);
  assert.ok(!fs.existsSync(path.join(dir, 'model.safetensors')));
  await checkAgainstNaive(dir, a, w, 32);
});

test('Llama with f16 weights, attention_bias (q/k/v/o biases) and linear rope_scaling', async () => {
  const a: Arch = {
    hidden: 32,
    ffn: 64,
    layers: 2,
    heads: 4,
    kvHeads: 4,
    headDim: 8,
    vocab: 30,
    theta: 500_000,
    eps: 1e-6,
    rope: { type: 'linear', factor: 4 },
    qkvBias: true,
    oBias: true,
    tied: false,
  };
  const dir = path.join(root, 'llama-f16');
  writeConfig(dir, {
    model_type: 'llama',
    hidden_size: 32,
    intermediate_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    vocab_size: 30,
    rms_norm_eps: 1e-6,
    rope_theta: 500000.0,
    rope_scaling: { type: 'linear', factor: 4.0 },
    attention_bias: true,
    torch_dtype: 'float16',
  });
  const w = randomWeights(a, 41, 'F16');
  writeSafetensors(path.join(dir, 'model.safetensors'), toWrite(w, 'F16'));
  await checkAgainstNaive(dir, a, w, 42);
});
