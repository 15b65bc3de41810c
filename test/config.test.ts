import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { UserError } from '../src/errors.ts';
import { type ModelConfig, parseModelConfig } from '../src/io/config.ts';
import { loadModelConfig } from '../src/io/config-file.ts';
import { ropeTable } from '../src/io/rope.ts';
import { MODELS } from './helpers.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-cfg-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let seq = 0;
function writeConfig(cfg: unknown): string {
  const dir = path.join(root, `c${seq++}`);
  fs.mkdirSync(dir);
  fs.writeFileSync(
    path.join(dir, 'config.json'),
    typeof cfg === 'string' ? cfg : JSON.stringify(cfg, null, 2),
  );
  return dir;
}

function throwsUser(fn: () => unknown, ...fragments: string[]): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof UserError, `expected a UserError, got ${String(err)}`);
  assert.ok(!err.message.includes('\n'), 'one line');
  for (const f of fragments)
    assert.ok(err.message.includes(f), `${JSON.stringify(err.message)} should contain ${f}`);
}

/** Independent float64 reference of the default RoPE frequencies. */
function refInvFreq(theta: number, dim: number): number[] {
  return Array.from({ length: dim / 2 }, (_, i) => 1 / theta ** ((2 * i) / dim));
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rel = 2e-6): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    assert.ok(Math.abs(a - e) <= rel * Math.abs(e), `[${i}] ${a} vs ${e}`);
  }
}

const base = {
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  vocab_size: 128256,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 131072,
};

describe('loadModelConfig', () => {
  test('llama-small (transformers 4.x style, rope_theta)', () => {
    const cfg = loadModelConfig(`${MODELS}llama-small`);
    const { raw, ...rest } = cfg;
    assert.equal(raw.transformers_version, '4.46.0');
    assert.deepEqual(rest, {
      modelType: 'llama',
      hiddenSize: 384,
      intermediateSize: 1024,
      numLayers: 8,
      numHeads: 6,
      numKvHeads: 2,
      headDim: 64,
      vocabSize: 8192,
      rmsNormEps: 1e-5,
      rope: { type: 'default', theta: 500000 },
      tieWordEmbeddings: false,
      qkvBias: false,
      oBias: false,
      mlpBias: false,
      dtype: 'bfloat16',
      bosTokenId: 0,
      eosTokenId: 1,
      maxPositionEmbeddings: 4096,
      slidingWindow: null,
    } satisfies Omit<ModelConfig, 'raw'>);
    const t = ropeTable(cfg);
    assert.equal(t.invFreq.length, 32);
    assert.equal(t.attentionScaling, 1);
    assertClose(t.invFreq, refInvFreq(500000, 64));
    assert.equal(t.invFreq[0], 1);
  });

  test('llama-tiny (transformers 5.x style, rope_parameters, dtype)', () => {
    const cfg = loadModelConfig(`${MODELS}llama-tiny`);
    assert.equal(cfg.modelType, 'llama');
    assert.equal(cfg.hiddenSize, 256);
    assert.equal(cfg.numHeads, 4);
    assert.equal(cfg.numKvHeads, 2);
    assert.equal(cfg.headDim, 64);
    assert.equal(cfg.intermediateSize, 704);
    assert.equal(cfg.numLayers, 4);
    assert.equal(cfg.dtype, 'bfloat16');
    assert.deepEqual(cfg.rope, { type: 'default', theta: 500000 });
    assertClose(ropeTable(cfg).invFreq, refInvFreq(500000, 64));
  });

  test('default invFreq follows torch float32 arithmetic bit for bit (pow correctly rounded)', () => {
    const cfg = parseModelConfig({ ...base, model_type: 'llama', rope_theta: 10000, head_dim: 128 });
    const inv = ropeTable(cfg).invFreq;
    const f = Math.fround;
    for (let i = 0; i < 64; i++) assert.equal(inv[i], f(1 / f(10000 ** f((2 * i) / 128))));
    // float64 values of 10000^(-2i/128) for i = 1, 10, 63
    assertClose([inv[1], inv[10], inv[63]], [0.8659643, 0.2371374, 1.154782e-4], 1e-6);
  });

  test('Llama 3.1 rope_scaling llama3 (4.x, "rope_type")', () => {
    const dir = writeConfig({
      ...base,
      model_type: 'llama',
      architectures: ['LlamaForCausalLM'],
      bos_token_id: 128000,
      eos_token_id: [128001, 128008, 128009],
      head_dim: 128,
      rope_theta: 500000.0,
      rope_scaling: {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
        rope_type: 'llama3',
      },
      torch_dtype: 'bfloat16',
    });
    const cfg = loadModelConfig(dir);
    assert.deepEqual(cfg.rope, {
      type: 'llama3',
      theta: 500000,
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
    assert.deepEqual(cfg.eosTokenId, [128001, 128008, 128009]);
    assert.equal(cfg.bosTokenId, 128000);

    // independent float64 reference of the llama3 formula
    const ref = refInvFreq(500000, 128).map((inv) => {
      const wavelen = (2 * Math.PI) / inv;
      if (wavelen < 8192 / 4) return inv;
      if (wavelen > 8192 / 1) return inv / 8;
      const smooth = (8192 / wavelen - 1) / (4 - 1);
      return (1 - smooth) * (inv / 8) + smooth * inv;
    });
    const t = ropeTable(cfg);
    assert.equal(t.attentionScaling, 1);
    assertClose(t.invFreq, ref, 1e-5);
    // high frequencies untouched, low ones divided by 8, the band between smoothed
    assertClose([t.invFreq[0], t.invFreq[20]], [1, ref[20]]);
    assert.ok(Math.abs(t.invFreq[63] - refInvFreq(500000, 128)[63] / 8) < 1e-6 * t.invFreq[63]);
    const medium = ref.findIndex((inv) => {
      const w = (2 * Math.PI) / inv;
      return w >= 2048 && w <= 8192;
    });
    assert.ok(medium > 0);
    assertClose([t.invFreq[medium]], [ref[medium]], 1e-5);
    const ref0 = refInvFreq(500000, 128);
    assert.ok(t.invFreq[medium] < ref0[medium] && t.invFreq[medium] > ref0[medium] / 8);
  });

  test('llama3 in transformers 5.x rope_parameters form, and old "type" key', () => {
    const rp = {
      rope_type: 'llama3',
      rope_theta: 500000,
      factor: 32,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    };
    const a = parseModelConfig({ ...base, model_type: 'llama', rope_parameters: rp });
    assert.equal(a.rope.type, 'llama3');
    const { rope_type: _, ...old } = rp;
    const b = parseModelConfig({ ...base, model_type: 'llama', rope_scaling: { ...old, type: 'llama3' } });
    assert.deepEqual(a.rope, b.rope);
    // per-attention-type nesting with identical entries
    const c = parseModelConfig({ ...base, model_type: 'llama', rope_parameters: { full_attention: rp } });
    assert.deepEqual(c.rope, a.rope);
  });

  test('llama3 missing a field names it', () => {
    throwsUser(
      () =>
        parseModelConfig(
          {
            ...base,
            model_type: 'llama',
            rope_scaling: { rope_type: 'llama3', factor: 8, high_freq_factor: 4 },
          },
          'x/config.json',
        ),
      'x/config.json',
      'rope_scaling.low_freq_factor is missing',
      'llama3',
    );
  });

  test('linear, dynamic and yarn scaling', () => {
    const lin = parseModelConfig({
      ...base,
      model_type: 'llama',
      rope_theta: 10000,
      rope_scaling: { type: 'linear', factor: 4 },
    });
    assert.deepEqual(lin.rope, { type: 'linear', theta: 10000, factor: 4 });
    assertClose(
      ropeTable(lin).invFreq,
      refInvFreq(10000, 128).map((x) => x / 4),
    );

    const dyn = parseModelConfig({
      ...base,
      model_type: 'llama',
      max_position_embeddings: 4096,
      rope_scaling: { type: 'dynamic', factor: 2 },
    });
    assert.deepEqual(dyn.rope, { type: 'dynamic', theta: 10000, factor: 2 });
    assertClose(ropeTable(dyn).invFreq, refInvFreq(10000, 128));
    assertClose(ropeTable(dyn, 4096).invFreq, refInvFreq(10000, 128));
    const longBase = 10000 * ((2 * 8192) / 4096 - 1) ** (128 / 126);
    assertClose(ropeTable(dyn, 8192).invFreq, refInvFreq(longBase, 128));

    // Qwen2.5 long-context recipe
    const yarn = parseModelConfig({
      ...base,
      model_type: 'qwen2',
      head_dim: 128,
      max_position_embeddings: 32768,
      rope_theta: 1000000,
      rope_scaling: { factor: 4.0, original_max_position_embeddings: 32768, type: 'yarn' },
    });
    assert.equal(yarn.rope.type, 'yarn');
    const t = ropeTable(yarn);
    const attn = 0.1 * Math.log(4) + 1;
    assert.ok(Math.abs(t.attentionScaling - attn) < 1e-12);
    // independent reference: NTK-by-parts ramp between the correction dims
    const dim = 128;
    const corr = (rot: number) => (dim * Math.log(32768 / (rot * 2 * Math.PI))) / (2 * Math.log(1e6));
    const low = Math.max(Math.floor(corr(32)), 0);
    const high = Math.min(Math.ceil(corr(1)), dim - 1);
    const ref = refInvFreq(1e6, dim).map((inv, i) => {
      const ramp = Math.min(Math.max((i - low) / (high - low), 0), 1);
      const extrap = 1 - ramp;
      return (inv / 4) * (1 - extrap) + inv * extrap;
    });
    assertClose(t.invFreq, ref, 1e-5);
    assert.equal(t.invFreq[0], 1); // extrapolated (unchanged) at high frequency
    assertClose([t.invFreq[63]], [refInvFreq(1e6, dim)[63] / 4], 1e-5); // interpolated at low frequency
  });

  test('yarn with mscale / mscale_all_dim and explicit attention_factor', () => {
    const cfg = (extra: object) =>
      parseModelConfig({
        ...base,
        model_type: 'llama',
        rope_parameters: {
          rope_type: 'yarn',
          rope_theta: 10000,
          factor: 40,
          original_max_position_embeddings: 4096,
          ...extra,
        },
      });
    const m = cfg({ mscale: 0.8, mscale_all_dim: 0.8 });
    assert.equal(ropeTable(m).attentionScaling, 1);
    const m2 = cfg({ mscale: 1, mscale_all_dim: 0.5 });
    const g = (s: number, k: number) => 0.1 * k * Math.log(s) + 1;
    assert.ok(Math.abs(ropeTable(m2).attentionScaling - g(40, 1) / g(40, 0.5)) < 1e-12);
    assert.equal(ropeTable(cfg({ attention_factor: 1.25 })).attentionScaling, 1.25);
  });

  test('Qwen2: q/k/v biases, no o bias, tied embeddings, sliding window only when used', () => {
    const qwen = {
      architectures: ['Qwen2ForCausalLM'],
      attention_dropout: 0.0,
      bos_token_id: 151643,
      eos_token_id: 151645,
      hidden_act: 'silu',
      hidden_size: 896,
      initializer_range: 0.02,
      intermediate_size: 4864,
      max_position_embeddings: 32768,
      max_window_layers: 21,
      model_type: 'qwen2',
      num_attention_heads: 14,
      num_hidden_layers: 24,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000.0,
      sliding_window: 32768,
      tie_word_embeddings: true,
      torch_dtype: 'bfloat16',
      transformers_version: '4.43.1',
      use_cache: true,
      use_sliding_window: false,
      vocab_size: 151936,
    };
    const cfg = loadModelConfig(writeConfig(qwen));
    assert.equal(cfg.modelType, 'qwen2');
    assert.equal(cfg.headDim, 64);
    assert.equal(cfg.qkvBias, true);
    assert.equal(cfg.oBias, false);
    assert.equal(cfg.mlpBias, false);
    assert.equal(cfg.tieWordEmbeddings, true);
    assert.equal(cfg.slidingWindow, null);
    assert.equal(cfg.eosTokenId, 151645);
    assert.deepEqual(cfg.rope, { type: 'default', theta: 1000000 });
    const sw = parseModelConfig({ ...qwen, use_sliding_window: true, tie_word_embeddings: undefined });
    assert.equal(sw.slidingWindow, 32768);
    assert.equal(sw.tieWordEmbeddings, false);
  });

  test('Mistral: no biases even if attention_bias is set, sliding_window recorded, head_dim null', () => {
    const mistral = {
      architectures: ['MistralForCausalLM'],
      bos_token_id: 1,
      eos_token_id: 2,
      head_dim: null,
      hidden_act: 'silu',
      hidden_size: 4096,
      initializer_range: 0.02,
      intermediate_size: 14336,
      max_position_embeddings: 32768,
      model_type: 'mistral',
      num_attention_heads: 32,
      num_hidden_layers: 32,
      num_key_value_heads: 8,
      rms_norm_eps: 1e-5,
      rope_theta: 10000.0,
      sliding_window: 4096,
      tie_word_embeddings: false,
      torch_dtype: 'float16',
      transformers_version: '4.34.0',
      use_cache: true,
      vocab_size: 32000,
    };
    const cfg = loadModelConfig(writeConfig(mistral));
    assert.equal(cfg.modelType, 'mistral');
    assert.equal(cfg.headDim, 128);
    assert.equal(cfg.numKvHeads, 8);
    assert.equal(cfg.slidingWindow, 4096);
    assert.equal(cfg.dtype, 'float16');
    assert.equal(cfg.qkvBias || cfg.oBias || cfg.mlpBias, false);
    const v2 = parseModelConfig({ ...mistral, sliding_window: null, rope_theta: 1e6, attention_bias: true });
    assert.equal(v2.slidingWindow, null);
    assert.equal(v2.qkvBias, false);
    assert.deepEqual(v2.rope, { type: 'default', theta: 1e6 });
  });

  test('llama defaults: kv heads, head_dim, eps, bos/eos, dtype, attention/mlp bias', () => {
    const cfg = parseModelConfig({
      model_type: 'llama',
      hidden_size: 64,
      intermediate_size: 128,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      vocab_size: 100,
      attention_bias: true,
      mlp_bias: true,
    });
    assert.equal(cfg.numKvHeads, 4);
    assert.equal(cfg.headDim, 16);
    assert.equal(cfg.rmsNormEps, 1e-6);
    assert.equal(cfg.maxPositionEmbeddings, 2048);
    assert.equal(cfg.bosTokenId, 1);
    assert.equal(cfg.eosTokenId, 2);
    assert.equal(cfg.dtype, 'float32');
    assert.equal(cfg.tieWordEmbeddings, false);
    assert.deepEqual(cfg.rope, { type: 'default', theta: 10000 });
    assert.ok(cfg.qkvBias && cfg.oBias && cfg.mlpBias);
  });

  test('errors: unknown / missing model_type, missing fields, bad values, files', () => {
    const dir = writeConfig({ ...base, model_type: 'gpt2' });
    throwsUser(
      () => loadModelConfig(dir),
      `${dir}/config.json: model_type "gpt2" is not supported (supported: llama, mistral, qwen2)`,
    );
    throwsUser(() => parseModelConfig({ ...base }), 'config.json', 'model_type is missing');
    const { hidden_size: _, ...noHidden } = base;
    throwsUser(
      () => parseModelConfig({ ...noHidden, model_type: 'llama' }),
      'config.json: hidden_size is missing',
    );
    throwsUser(
      () => parseModelConfig({ ...base, model_type: 'llama', num_hidden_layers: '32' }),
      'num_hidden_layers must be a positive integer, found "32"',
    );
    throwsUser(
      () => parseModelConfig({ ...base, model_type: 'llama', num_key_value_heads: 5 }),
      'num_attention_heads (32) must be a multiple of num_key_value_heads (5)',
    );
    throwsUser(
      () => parseModelConfig({ ...base, model_type: 'llama', partial_rotary_factor: 0.5 }),
      'partial_rotary_factor 0.5',
    );
    throwsUser(
      () => parseModelConfig({ ...base, model_type: 'llama', rope_scaling: { type: 'longrope', factor: 2 } }),
      'rope_scaling.type "longrope" is not supported',
    );
    throwsUser(
      () => parseModelConfig({ ...base, model_type: 'llama', hidden_act: 'gelu' }),
      'hidden_act "gelu" is not supported',
    );
    throwsUser(
      () => parseModelConfig({ ...base, model_type: 'llama', torch_dtype: 'int8' }),
      'torch_dtype "int8" is not supported',
    );
    throwsUser(
      () =>
        parseModelConfig({
          ...base,
          model_type: 'llama',
          rope_parameters: { full_attention: { rope_theta: 1e6 }, sliding_attention: { rope_theta: 1e4 } },
        }),
      'rope_parameters differ per attention type',
    );
    const missing = path.join(root, 'nowhere');
    throwsUser(() => loadModelConfig(missing), path.join(missing, 'config.json'), 'no such file');
    const bad = writeConfig('{"model_type": "llama",');
    throwsUser(() => loadModelConfig(bad), path.join(bad, 'config.json'), 'not valid JSON');
    const arr = writeConfig('[1]');
    throwsUser(() => loadModelConfig(arr), 'expected a JSON object');
  });
});
