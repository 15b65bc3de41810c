/**
 * Loading other tools' quantized checkpoints (io/import.ts): llama-tiny quantized by llmq, exported
 * to AutoAWQ GEMM, GPTQ v1 and compressed-tensors pack-quantized, then loaded through loadModel.
 * Every linear must decode exactly to llmq's own dequantized weight with fp16-rounded scales, and
 * the perplexity must equal that of the llmq model with its scales (and the plain tensors the
 * export writes in fp16) rounded to fp16. Variants the tools write in the wild are made by editing
 * the exported files here: AutoAWQ's w_bit / q_group_size names, GPTQ v2 zero points, legacy
 * quantize_config.json, f32 / bf16 scales, shards; then config reading and refusals.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { evalCommand } from '../src/cli/eval.ts';
import { inspectCommand } from '../src/cli/inspect.ts';
import { UserError } from '../src/errors.ts';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { formatName } from '../src/formats/index.ts';
import { type ExportLayout, exportCheckpoint } from '../src/io/export/index.ts';
import { readForeignQuantConfig } from '../src/io/import.ts';
import {
  openCheckpoint,
  type TensorToWrite,
  writeSafetensors,
  writeShardedCheckpoint,
} from '../src/io/safetensors.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { LINEARS, type LlamaModel, linearTensorName, type QuantizedWeight } from '../src/model/llama.ts';
import { loadModel } from '../src/quant/load.ts';
import '../src/quant/methods.ts';
import { type Recipe, resolveRecipe } from '../src/quant/recipe.ts';
import { dequantizeWeight, setQuantizedWeight } from '../src/quant/weights.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../src/tensor/dtype.ts';
import type { Tensor } from '../src/tensor/tensor.ts';
import { MODELS, savedTinyCheckpoint, WIKITEXT } from './helpers.ts';

const cpu = new CpuBackend();
const TINY = `${MODELS}llama-tiny`;
const ROOT = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-import-'));
after(() => fs.rmSync(ROOT, { recursive: true, force: true }));

const TEXT = path.join(ROOT, 'text.raw');
fs.writeFileSync(TEXT, readEvalText(WIKITEXT).slice(0, 4000));
const TOKENS = loadTokenizer(TINY).encode(fs.readFileSync(TEXT, 'utf8'));
const PPL = { seqLen: 64, maxWindows: 2 };
let serial = 0;

function recipeOf(obj: Record<string, unknown>): Recipe {
  const file = path.join(ROOT, `recipe-${serial++}.json`);
  fs.writeFileSync(file, JSON.stringify(obj));
  return resolveRecipe(file);
}

interface Source {
  dir: string;
  model: LlamaModel;
  /** perplexity of the llmq checkpoint with fp16 scales and fp16 plain tensors, computed once */
  ppl?: number;
}

async function quantized(recipe: Recipe, withCalibration = false): Promise<Source> {
  const dir = path.join(ROOT, `q-${serial++}`);
  return { dir, model: await savedTinyCheckpoint(cpu, recipe, dir, withCalibration) };
}

const round16 = (x: Float32Array) => f16ToF32(f32ToF16(x));

/** llmq's dequantized weight with its scales rounded to fp16 (then optionally through `scales`). */
function expectedWeight(q: QuantizedWeight, scales = round16): Float32Array {
  return dequantizeWeight({ ...q, encoded: { ...q.encoded, scales: scales(q.encoded.scales) } });
}

function assertSame(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, what);
  const first = got.findIndex((v, i) => v !== want[i]);
  assert.equal(first, -1, `${what}: first difference at ${first}: ${got[first]} vs ${want[first]}`);
}

/** What the exported checkpoint computes as llmq sees it: fp16 scales, fp16 plain tensors. */
async function referencePpl(src: Source): Promise<number> {
  if (src.ppl !== undefined) return src.ppl;
  const { model } = await loadModel(src.dir, cpu);
  const to16 = async (t: Tensor) => cpu.upload(round16(await cpu.read(t)), t.shape, 'f32');
  model.embedTokens = await to16(model.embedTokens);
  model.lmHead = await to16(model.lmHead);
  model.finalNorm = await to16(model.finalNorm);
  for (const [i, L] of model.layers.entries()) {
    L.inputNorm = await to16(L.inputNorm);
    L.postNorm = await to16(L.postNorm);
    for (const name of LINEARS) {
      const lin = L.linears[name];
      const q = lin.quantized;
      if (q)
        setQuantizedWeight(model, i, name, {
          ...q,
          encoded: { ...q.encoded, scales: round16(q.encoded.scales) },
        });
      else lin.weight = await to16(lin.weight);
    }
  }
  src.ppl = (await perplexity(model, TOKENS, PPL)).ppl;
  return src.ppl;
}

function exported(src: Source, layout: ExportLayout): string {
  const out = path.join(ROOT, `e-${serial++}`);
  exportCheckpoint(src.dir, layout, out);
  return out;
}

/** A copy of `dir` with config.json's quantization_config edited by `edit`. */
function withConfig(
  dir: string,
  edit: (q: Record<string, unknown>, config: Record<string, unknown>) => void,
): string {
  const out = path.join(ROOT, `c-${serial++}`);
  fs.cpSync(dir, out, { recursive: true });
  const file = path.join(out, 'config.json');
  const config = JSON.parse(fs.readFileSync(file, 'utf8'));
  edit(config.quantization_config, config);
  fs.writeFileSync(file, JSON.stringify(config));
  return out;
}

/** A copy of `dir` with every tensor passed through `edit` (same name unless it says otherwise). */
function withTensors(dir: string, edit: (t: TensorToWrite) => TensorToWrite, shardBytes?: number): string {
  const out = path.join(ROOT, `t-${serial++}`);
  fs.cpSync(dir, out, { recursive: true });
  const ck = openCheckpoint(dir);
  const tensors = ck.names().map((name) => edit({ name, ...ck.read(name) }));
  ck.close();
  if (shardBytes === undefined) writeSafetensors(path.join(out, 'model.safetensors'), tensors);
  else {
    fs.rmSync(path.join(out, 'model.safetensors'));
    writeShardedCheckpoint(out, tensors, shardBytes);
  }
  return out;
}

interface CheckOptions {
  /** the imported spec is asymmetric where llmq's was symmetric (AWQ stores the zero points 8) */
  zerosStored?: boolean;
  /** scale transform after the fp16 rounding (bf16 rewrite) */
  scales?: (s: Float32Array) => Float32Array;
  /** linears expected in full precision */
  plain?: string[];
  ppl?: boolean;
}

/** loadModel on `dir`: every linear as llmq's with fp16 scales, and (optionally) the same perplexity. */
async function checkImport(src: Source, dir: string, opts: CheckOptions = {}): Promise<LlamaModel> {
  const { model } = await loadModel(dir, cpu);
  for (const [i, L] of model.layers.entries())
    for (const name of LINEARS) {
      const module = linearTensorName(i, name).replace(/\.weight$/, '');
      const want = src.model.layers[i].linears[name];
      const got = L.linears[name];
      if (opts.plain?.includes(name)) {
        assert.equal(got.quantized, undefined, module);
        assertSame(await cpu.read(got.weight), round16(await cpu.read(want.weight)), module);
        continue;
      }
      const q = want.quantized as QuantizedWeight;
      const imported = got.quantized as QuantizedWeight;
      const name16 = formatName(q.encoded.spec);
      assert.equal(
        formatName(imported.encoded.spec),
        opts.zerosStored ? name16.replace('-sym', '') : name16,
        module,
      );
      assert.deepEqual(imported.gIdx, q.gIdx, `${module} g_idx`);
      const expected = expectedWeight(q, opts.scales ? (s) => opts.scales!(round16(s)) : round16);
      assertSame(dequantizeWeight(imported), expected, `${module} decoded`);
      assertSame(await cpu.read(got.weight), expected, `${module} forward weight`);
    }
  if (opts.ppl !== false) assert.equal((await perplexity(model, TOKENS, PPL)).ppl, await referencePpl(src));
  return model;
}

function throwsUser(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof UserError && pattern.test(e.message));
}

async function rejectsUser(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof UserError && pattern.test(e.message));
}

async function stdoutOf(run: () => Promise<void>): Promise<string> {
  const lines: string[] = [];
  const write = process.stdout.write;
  process.stdout.write = ((s: string) => lines.push(s) > 0) as typeof process.stdout.write;
  try {
    await run();
  } finally {
    process.stdout.write = write;
  }
  return lines.join('');
}

// ---------------------------------------------------------------------------------------------

describe('INT4 asymmetric groups of 64', async () => {
  const src = await quantized(recipeOf({ name: 'g64', weights: 'int4-g64' }));
  const awq = exported(src, 'autoawq');
  const gptq = exported(src, 'gptq');
  const ct = exported(src, 'compressed-tensors');

  test('autoawq, gptq and compressed-tensors load exactly, same perplexity', async () => {
    for (const dir of [awq, gptq, ct]) {
      const model = await checkImport(src, dir);
      assert.equal(model.quantization?.quantized_linears, 28);
    }
    const model = await checkImport(src, gptq, { ppl: false });
    assert.equal(model.quantization?.recipe, 'gptq (imported)');
    assert.deepEqual(model.quantization?.weight_formats, ['int4-g64']);
  });

  test('AutoAWQ config with only w_bit / q_group_size', async () => {
    const dir = withConfig(awq, (q) => {
      delete q.bits;
      delete q.group_size;
      delete q.modules_to_not_convert;
      delete q.version;
    });
    await checkImport(src, dir, { ppl: false });
    const conflict = withConfig(awq, (q) => {
      q.bits = 8;
    });
    throwsUser(() => readForeignQuantConfig(conflict), /quantization_config\.bits is 8 but w_bit is 4/);
  });

  test('GPTQ gptq_v2 (zero points stored without the -1) and legacy quantize_config.json', async () => {
    const v2 = withTensors(
      withConfig(gptq, (q) => {
        q.checkpoint_format = 'gptq_v2';
      }),
      (t) => {
        if (!t.name.endsWith('.qzeros')) return t;
        const words = (t.data as Int32Array).map((w) => {
          let out = 0;
          for (let k = 0; k < 8; k++) out |= (((w >>> (4 * k)) & 15) + 1) << (4 * k);
          return out;
        });
        return { ...t, data: words };
      },
    );
    await checkImport(src, v2, { ppl: false });
    const legacy = withConfig(gptq, (q, config) => {
      delete config.quantization_config;
      delete q.quant_method;
      fs.writeFileSync(path.join(ROOT, 'legacy.json'), JSON.stringify(q));
    });
    fs.renameSync(path.join(ROOT, 'legacy.json'), path.join(legacy, 'quantize_config.json'));
    await checkImport(src, legacy, { ppl: false });
  });

  test('f32 and bf16 scales, sharded checkpoint', async () => {
    const f32 = withTensors(gptq, (t) =>
      t.name.endsWith('.scales') ? { ...t, dtype: 'F32', data: f16ToF32(t.data as Uint16Array) } : t,
    );
    await checkImport(src, f32, { ppl: false });
    const bf16 = withTensors(ct, (t) =>
      t.name.endsWith('.weight_scale')
        ? { ...t, dtype: 'BF16', data: f32ToBf16(f16ToF32(t.data as Uint16Array)) }
        : t,
    );
    await checkImport(src, bf16, { ppl: false, scales: (s) => bf16ToF32(f32ToBf16(s)) });
    const sharded = withTensors(ct, (t) => t, 1 << 20);
    assert.ok(fs.existsSync(path.join(sharded, 'model.safetensors.index.json')));
    await checkImport(src, sharded);
  });

  test('refusals: --recipe, other layout variants, config and tensors that disagree', async () => {
    await rejectsUser(
      loadModel(gptq, cpu, { recipe: resolveRecipe('rtn-w4') }),
      /already quantized \(gptq checkpoint\)/,
    );
    const cases: [string, RegExp][] = [
      [
        withConfig(awq, (q) => void (q.version = 'gemv')),
        /version "gemv": llmq reads the AutoAWQ GEMM layout only/,
      ],
      [withConfig(awq, (q) => void (q.backend = 'llm-awq')), /backend "llm-awq"/],
      [withConfig(gptq, (q) => void (q.checkpoint_format = 'marlin')), /checkpoint_format "marlin"/],
      [
        withConfig(gptq, (q) => void (q.bits = 3)),
        /quantization_config\.bits 3: llmq reads GPTQ INT2, INT4 and INT8/,
      ],
      [
        withConfig(ct, (q) => void (q.format = 'float-quantized')),
        /format "float-quantized": .*pack-quantized/,
      ],
      [withConfig(ct, (q) => void (q.format = 'int-quantized')), /format "int-quantized"/],
      [withConfig(ct, (q) => void (q.quantization_status = 'frozen')), /quantization_status "frozen"/],
      [
        withConfig(ct, (q) => {
          const groups = q.config_groups as Record<string, Record<string, unknown>>;
          groups.group_0.input_activations = { num_bits: 8, type: 'int', strategy: 'token', dynamic: true };
        }),
        /group_0\.input_activations is set: llmq reads weight-only/,
      ],
      [
        withConfig(ct, (q) => {
          const groups = q.config_groups as Record<string, Record<string, Record<string, unknown>>>;
          groups.group_0.weights.type = 'float';
        }),
        /weights\.type "float"/,
      ],
      [
        withConfig(gptq, (q) => void (q.quant_method = 'bitsandbytes')),
        /quant_method "bitsandbytes" is not supported/,
      ],
    ];
    for (const [dir, pattern] of cases) await rejectsUser(loadModel(dir, cpu), pattern);
    // asymmetric zero points under sym=true: loaders disagree on what such a checkpoint means
    await rejectsUser(
      loadModel(
        withConfig(gptq, (q) => void (q.sym = true)),
        cpu,
      ),
      /q_proj\.qzeros" holds zero point \d+ where sym=true implies 8/,
    );
    await rejectsUser(
      loadModel(
        withConfig(awq, (q) => void (q.modules_to_not_convert = ['o_proj'])),
        cpu,
      ),
      /o_proj\.qweight" is stored quantized but .* leaves model\.layers\.0\.self_attn\.o_proj unquantized/,
    );
    const lmHead = withTensors(gptq, (t) =>
      t.name === 'lm_head.weight' ? { ...t, name: 'lm_head.qweight' } : t,
    );
    await rejectsUser(
      loadModel(lmHead, cpu),
      /"lm_head\.qweight": llmq reads quantized decoder linears only/,
    );
    throwsUser(() => exportCheckpoint(gptq, 'autoawq', path.join(ROOT, 'x')), /quantized by another tool/);
  });

  test('eval --kl: the exported source, else a clear request for --kl-base; inspect', async () => {
    const json = await stdoutOf(() =>
      evalCommand([ct, '--ppl', TEXT, '--seqlen', '64', '--max-windows', '1', '--kl', '--json']),
    );
    const out = JSON.parse(json);
    assert.equal(out.recipe, 'compressed-tensors (imported)');
    assert.equal(out.kl.base, TINY);
    const bare = withConfig(ct, (_, config) => void delete config.llmq_export);
    await rejectsUser(
      evalCommand([bare, '--ppl', TEXT, '--seqlen', '64', '--kl']),
      /--kl: .* is a compressed-tensors checkpoint with no record of its full-precision source; pass --kl-base/,
    );
    const info = JSON.parse(await stdoutOf(() => inspectCommand([awq, '--json'])));
    assert.equal(info.quantization, 'awq');
  });
});

describe('INT4 asymmetric per channel (rtn-w4)', async () => {
  const src = await quantized(resolveRecipe('rtn-w4'));
  for (const layout of ['autoawq', 'gptq', 'compressed-tensors'] as const)
    test(layout, async () => {
      await checkImport(src, exported(src, layout));
    });
});

describe('symmetric INT8 per channel (rtn-w8) and INT4 groups of 64', async () => {
  const w8 = await quantized(resolveRecipe('rtn-w8'));
  const w4 = await quantized(recipeOf({ name: 'g64-sym', weights: 'int4-g64-sym' }));
  test('INT8: gptq sym=true and compressed-tensors without zero points', async () => {
    await checkImport(w8, exported(w8, 'gptq'));
    await checkImport(w8, exported(w8, 'compressed-tensors'));
  });
  test('INT4 sym: gptq, compressed-tensors; autoawq stores the zero points 8', async () => {
    await checkImport(w4, exported(w4, 'gptq'));
    await checkImport(w4, exported(w4, 'compressed-tensors'));
    await checkImport(w4, exported(w4, 'autoawq'), { zerosStored: true });
  });
});

describe('GPTQ act_order (int4 g64, g_idx)', async () => {
  const src = await quantized(
    recipeOf({ name: 'gptq-ao', weights: 'int4-g64', steps: [{ gptq: { actOrder: true } }] }),
    true,
  );
  test('gptq (desc_act) and compressed-tensors (actorder group) carry g_idx', async () => {
    assert.ok(src.model.layers[0].linears.q_proj.quantized?.gIdx);
    await checkImport(src, exported(src, 'gptq'));
    await checkImport(src, exported(src, 'compressed-tensors'));
  });
  test('desc_act without g_idx is refused', async () => {
    const dir = withTensors(exported(src, 'gptq'), (t) =>
      t.name.endsWith('.g_idx') ? { ...t, name: t.name.replace('g_idx', 'moved') } : t,
    );
    await rejectsUser(loadModel(dir, cpu), /q_proj\.g_idx" is missing \(desc_act is true\)/);
  });
});

describe('a linear left in full precision', async () => {
  const src = await quantized(
    recipeOf({
      name: 'no-down',
      weights: 'int4-g64',
      targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj'],
    }),
  );
  test('compressed-tensors ignore and autoawq modules_to_not_convert load it as a plain weight', async () => {
    for (const layout of ['compressed-tensors', 'autoawq'] as const) {
      const model = await checkImport(src, exported(src, layout), { plain: ['down_proj'] });
      assert.equal(model.quantization?.quantized_linears, 24);
      assert.deepEqual(
        model.quantization?.unquantized_linears,
        [0, 1, 2, 3].map((i) => `model.layers.${i}.mlp.down_proj`),
      );
    }
  });
  test('a config that quantizes it without packed tensors is refused', async () => {
    const dir = withConfig(exported(src, 'compressed-tensors'), (q) => {
      q.ignore = ['lm_head'];
    });
    await rejectsUser(
      loadModel(dir, cpu),
      /down_proj\.weight_packed" is missing; .* quantizes model\.layers\.0\.mlp\.down_proj/,
    );
  });
});

describe('configs as other tools write them', () => {
  const dirWith = (q: Record<string, unknown>) => {
    const dir = path.join(ROOT, `cfg-${serial++}`);
    fs.mkdirSync(dir);
    const config = JSON.parse(fs.readFileSync(path.join(TINY, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, quantization_config: q }));
    return dir;
  };
  const m = (block: string, name: string) => `model.layers.3.${block}.${name}`;

  test('GPTQModel dynamic and transformers modules_in_block_to_quantize', () => {
    const fq = readForeignQuantConfig(
      dirWith({
        quant_method: 'gptq',
        bits: 4,
        group_size: 128,
        desc_act: false,
        sym: true,
        dynamic: { '-:.*\\.down_proj': {}, '+:.*q_proj': { bits: 8, group_size: 32 } },
      }),
    );
    const linear = fq?.settings.linear ?? (() => undefined);
    assert.equal(linear(m('mlp', 'down_proj')), undefined);
    assert.deepEqual(linear(m('self_attn', 'q_proj')), {
      bits: 8,
      group: 32,
      symmetric: true,
      actOrder: false,
      zeroOffset: 1,
    });
    assert.equal(linear(m('self_attn', 'k_proj'))?.bits, 4);
    const inBlock = readForeignQuantConfig(
      dirWith({
        quant_method: 'gptq',
        bits: 4,
        modules_in_block_to_quantize: [['self_attn.q_proj'], ['mlp.up_proj']],
      }),
    );
    assert.equal(inBlock?.settings.linear(m('self_attn', 'q_proj'))?.group, 128);
    assert.equal(inBlock?.settings.linear(m('self_attn', 'k_proj')), undefined);
  });

  test('compressed-tensors: several groups, re: targets and ignore, overlapping groups', () => {
    const weights = (bits: number, strategy: string, group: number | null) => ({
      num_bits: bits,
      type: 'int',
      symmetric: true,
      strategy,
      group_size: group,
      dynamic: false,
      actorder: null,
    });
    const q = {
      quant_method: 'compressed-tensors',
      format: 'pack-quantized',
      quantization_status: 'compressed',
      config_groups: {
        group_0: { targets: ['re:.*self_attn\\.'], weights: weights(8, 'channel', null) },
        group_1: { targets: ['re:.*mlp'], weights: weights(4, 'group', 128) },
      },
      ignore: ['lm_head', 're:.*layers\\.3\\.mlp\\.down'],
    };
    const linear = readForeignQuantConfig(dirWith(q))?.settings.linear ?? (() => undefined);
    assert.deepEqual(linear(m('self_attn', 'v_proj')), {
      bits: 8,
      group: -1,
      symmetric: true,
      actOrder: false,
    });
    assert.equal(linear(m('mlp', 'gate_proj'))?.group, 128);
    assert.equal(linear(m('mlp', 'down_proj')), undefined);
    assert.equal(linear('model.layers.2.mlp.down_proj')?.bits, 4);
    const overlap = readForeignQuantConfig(
      dirWith({
        ...q,
        config_groups: {
          ...q.config_groups,
          group_2: { targets: ['Linear'], weights: weights(4, 'group', 64) },
        },
      }),
    );
    throwsUser(
      () => overlap?.settings.linear(m('mlp', 'up_proj')),
      /group_1 and group_2 both target .*up_proj/,
    );
    throwsUser(
      () =>
        readForeignQuantConfig(
          dirWith({
            ...q,
            config_groups: { g: { targets: ['Linear'], weights: weights(4, 'tensor', null) } },
          }),
        ),
      /config_groups\.g\.weights\.strategy "tensor"/,
    );
  });
});
