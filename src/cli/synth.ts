/**
 * `llmq synth`: a random-weight bf16 checkpoint with the architecture (config.json, tensor names and
 * shapes) of a real model, for speed and memory measurements without downloading weights.
 *
 * Values: linear weights, biases and embeddings are N(0, 0.02^2) (the models' initializer_range),
 * RMSNorm weights 1. To make 16 GB quickly, rows are copied from a pool of 2^20 pre-drawn normals at
 * random offsets, so every row differs but values repeat across rows. The tokenizer of
 * shared/models/llama-small (8192 ids, all valid in every synthetic vocabulary) is copied in when
 * found, so `llmq eval` runs end to end; the perplexity of random weights means nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fail } from '../errors.ts';
import { parseModelConfig } from '../io/config.ts';
import { writeJsonAtomic, writeShards } from '../io/safetensors.ts';
import { f32ToBf16 } from '../tensor/dtype.ts';
import { intFlag, parse } from './args.ts';

export const SYNTH_HELP = `llmq synth --like llama-3-8b|llama-2-7b|qwen2-7b --out <dir> [--layers N] [--seed S] [--force]
  Writes a random-weight bf16 checkpoint with that model's config.json and tensor shapes
  (N(0, 0.02) weights, unit norms), sharded safetensors, for speed tests. --layers keeps the first N
  decoder layers. Copies a small tokenizer (8192 ids) so eval runs; its perplexity is meaningless.`;

const BASE = {
  hidden_act: 'silu',
  initializer_range: 0.02,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
};

/** config.json of each architecture (the published Hugging Face configs, trimmed). */
export const SYNTH_ARCHS: Record<string, Record<string, unknown>> = {
  'llama-3-8b': {
    ...BASE,
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: null,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: 128000,
    eos_token_id: 128001,
  },
  'llama-2-7b': {
    ...BASE,
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: 4096,
    intermediate_size: 11008,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 32,
    vocab_size: 32000,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    rope_scaling: null,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: 1,
    eos_token_id: 2,
  },
  'qwen2-7b': {
    ...BASE,
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    hidden_size: 3584,
    intermediate_size: 18944,
    num_hidden_layers: 28,
    num_attention_heads: 28,
    num_key_value_heads: 4,
    vocab_size: 152064,
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    use_sliding_window: false,
    bos_token_id: 151643,
    eos_token_id: 151643,
  },
};

const POOL = 1 << 20;
const STD = 0.02;

/** Deterministic source of N(0, STD^2) bf16 rows (mulberry32 + Box-Muller). */
export class SynthRng {
  private s: number;
  private readonly pool: Uint16Array;

  constructor(seed: number) {
    this.s = seed >>> 0;
    const f = new Float32Array(POOL);
    for (let i = 0; i < POOL; i++) {
      const u = Math.max(this.uniform(), 1e-12);
      f[i] = STD * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.uniform());
    }
    this.pool = f32ToBf16(f);
  }

  uniform(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** rows x cols bf16 bits, each row a slice of the pool at a random offset. */
  matrix(rows: number, cols: number): Uint16Array {
    const out = new Uint16Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      let at = r * cols;
      let left = cols;
      while (left > 0) {
        const n = Math.min(left, POOL >> 1);
        const from = Math.floor(this.uniform() * (POOL - n));
        out.set(this.pool.subarray(from, from + n), at);
        at += n;
        left -= n;
      }
    }
    return out;
  }
}

const BF16_ONE = 0x3f80;

export interface SynthTensor {
  name: string;
  shape: number[];
  /** bf16 bits, made on demand */
  make(): Uint16Array;
}

/** Every tensor of the checkpoint, in Hugging Face order, grouped by decoder layer (-1: outside). */
export function synthTensors(
  raw: Record<string, unknown>,
  seed = 0,
): { layer: number; tensor: SynthTensor }[] {
  const cfg = parseModelConfig(raw);
  const rng = new SynthRng(seed);
  const {
    hiddenSize: d,
    intermediateSize: ff,
    numHeads: H,
    numKvHeads: Hkv,
    headDim: Dh,
    vocabSize: V,
  } = cfg;
  const mat = (name: string, rows: number, cols: number): SynthTensor => ({
    name,
    shape: cols === 1 ? [rows] : [rows, cols],
    make: () => rng.matrix(rows, cols),
  });
  const ones = (name: string, n: number): SynthTensor => ({
    name,
    shape: [n],
    make: () => new Uint16Array(n).fill(BF16_ONE),
  });
  const out: { layer: number; tensor: SynthTensor }[] = [
    { layer: -1, tensor: mat('model.embed_tokens.weight', V, d) },
  ];
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    const add = (t: SynthTensor) => out.push({ layer: i, tensor: t });
    add(ones(`${p}.input_layernorm.weight`, d));
    for (const [n, rows] of [
      ['q_proj', H * Dh],
      ['k_proj', Hkv * Dh],
      ['v_proj', Hkv * Dh],
    ] as const) {
      add(mat(`${p}.self_attn.${n}.weight`, rows, d));
      if (cfg.qkvBias) add(mat(`${p}.self_attn.${n}.bias`, rows, 1));
    }
    add(mat(`${p}.self_attn.o_proj.weight`, d, H * Dh));
    if (cfg.oBias) add(mat(`${p}.self_attn.o_proj.bias`, d, 1));
    add(ones(`${p}.post_attention_layernorm.weight`, d));
    add(mat(`${p}.mlp.gate_proj.weight`, ff, d));
    add(mat(`${p}.mlp.up_proj.weight`, ff, d));
    add(mat(`${p}.mlp.down_proj.weight`, d, ff));
    if (cfg.mlpBias)
      for (const [n, rows] of [
        ['gate_proj', ff],
        ['up_proj', ff],
        ['down_proj', d],
      ] as const)
        add(mat(`${p}.mlp.${n}.bias`, rows, 1));
  }
  out.push({ layer: -1, tensor: ones('model.norm.weight', d) });
  if (!cfg.tieWordEmbeddings) out.push({ layer: -1, tensor: mat('lm_head.weight', V, d) });
  return out;
}

/** config.json of an architecture, with num_hidden_layers cut to `layers` when given. */
export function synthConfig(like: string, layers?: number): Record<string, unknown> {
  const base = SYNTH_ARCHS[like];
  if (!base) fail(`synth: unknown --like "${like}" (one of ${Object.keys(SYNTH_ARCHS).join(', ')})`);
  const full = base.num_hidden_layers as number;
  if (layers !== undefined && layers > full)
    fail(`synth: --layers ${layers} exceeds ${like}'s ${full} layers`);
  return { ...base, num_hidden_layers: layers ?? full };
}

const TOKENIZER_DIR = new URL('../../../shared/models/llama-small/', import.meta.url).pathname;
const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'];
/** tokenizer ids the copied tokenizer can produce */
const TOKENIZER_VOCAB = 8192;

/** Writes the checkpoint: embeddings, each decoder layer, and norm + head in shards of their own. */
export function writeSynthCheckpoint(dir: string, config: Record<string, unknown>, seed = 0): string[] {
  const all = synthTensors(config, seed);
  // a new shard whenever the layer changes: embeddings, each layer, final norm + head
  const groups: SynthTensor[][] = [];
  all.forEach(({ layer, tensor }, i) => {
    if (i === 0 || layer !== all[i - 1].layer) groups.push([]);
    groups[groups.length - 1].push(tensor);
  });
  const files = writeShards(dir, groups.length, (i) =>
    groups[i].map((t) => ({ name: t.name, dtype: 'BF16', shape: t.shape, data: t.make() })),
  );
  writeJsonAtomic(path.join(dir, 'config.json'), config);
  return files;
}

export async function synthCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('synth', argv, {
    like: { type: 'string' },
    out: { type: 'string' },
    layers: { type: 'string' },
    seed: { type: 'string' },
    force: { type: 'boolean', default: false },
  });
  if (positionals.length > 0) fail(`synth: unexpected argument "${positionals[0]}"`);
  if (!values.like) fail(`synth: --like is required (one of ${Object.keys(SYNTH_ARCHS).join(', ')})`);
  if (!values.out) fail('synth: --out <dir> is required');
  const layers = values.layers === undefined ? undefined : intFlag('layers', values.layers, 1);
  const config = synthConfig(values.like, layers);
  const dir = values.out;
  if (fs.existsSync(path.join(dir, 'config.json')) && !values.force)
    fail(`synth: ${dir} already holds a checkpoint (pass --force to overwrite)`);
  const files = writeSynthCheckpoint(dir, config, intFlag('seed', values.seed, 0, 0));
  let tokenizer = 'none (no tokenizer found; eval needs one)';
  if (
    fs.existsSync(path.join(TOKENIZER_DIR, 'tokenizer.json')) &&
    TOKENIZER_VOCAB <= (config.vocab_size as number)
  ) {
    for (const f of TOKENIZER_FILES)
      if (fs.existsSync(path.join(TOKENIZER_DIR, f))) {
        fs.copyFileSync(path.join(TOKENIZER_DIR, f), path.join(dir, f));
        fs.chmodSync(path.join(dir, f), 0o644);
      }
    tokenizer = `llama-small's (${TOKENIZER_VOCAB} ids)`;
  }
  process.stdout.write(
    `synth: wrote ${values.like} (${config.num_hidden_layers} layers, random bf16) to ${dir} in ${files.length} shards; tokenizer: ${tokenizer}\n`,
  );
}
