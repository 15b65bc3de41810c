import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { type CalibSet, loadCalibration } from '../src/calib/data.ts';
import type { FormatSpec } from '../src/formats/spec.ts';
import { ggmlTypeName, readGguf } from '../src/io/gguf.ts';
import { readImatrix } from '../src/io/imatrix-file.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { LINEARS, type LinearName, type LlamaModel } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { saveQuantized } from '../src/quant/checkpoint.ts';
import { factorHessian, gptq } from '../src/quant/gptq.ts';
import { HessianAccumulator } from '../src/quant/hessian.ts';
import { f32ToF16 } from '../src/tensor/dtype.ts';
import '../src/quant/methods.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import type { GptqStep, Recipe } from '../src/quant/recipe.ts';
import { setQuantizedWeight } from '../src/quant/weights.ts';
import type { Backend, Tensor } from '../src/tensor/tensor.ts';

/** Deterministic random numbers for tests (mulberry32 + Box-Muller). */
export function rng(seed: number) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = (n: number, std = 1): Float32Array => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const u = Math.max(uniform(), 1e-12);
      out[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * uniform());
    }
    return out;
  };
  return { uniform, normal };
}

/** f32 values next to x: `steps` ulp up (negative: down), through the bit pattern. */
function ulpStep(x: number, steps: number): number {
  const f = new Float32Array([x]);
  const u = new Int32Array(f.buffer);
  u[0] += x < 0 ? -steps : steps;
  return f[0];
}

/** Values next to ties: each row's largest value sets scale ~ amax / 127, the others are (k + 0.5) scale and 1-4 ulp either side. */
export function nearTies(rows: number, cols: number, seed = 31): { x: Float32Array; scales: Float32Array } {
  const x = new Float32Array(rows * cols);
  const scales = new Float32Array(rows);
  const r = rng(seed);
  for (let m = 0; m < rows; m++) {
    const amax = Math.fround(2 ** (r.uniform() * 20 - 10) * (1 + r.uniform()));
    scales[m] = Math.fround(amax / 127);
    x[m * cols] = amax;
    for (let j = 1; j < cols; j++) {
      const tie = Math.fround((Math.floor(r.uniform() * 250) - 125 + 0.5) * scales[m]);
      x[m * cols + j] = ulpStep(tie, (j % 9) - 4);
    }
  }
  return { x, scales };
}

/** max |a - b| over max |b| */
export function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

export const SHARED = new URL('../../shared/', import.meta.url).pathname;
export const MODELS = `${SHARED}models/`;
export const WIKITEXT = `${SHARED}data/wikitext-2-raw/wiki.test.raw`;

/** A manifest for checkpoints that tests write (no real source hash or timings). */
export function testManifest(source: string) {
  return {
    tool: 'llmq',
    tool_version: 'test',
    created: '',
    source_model: source,
    source_sha256: '',
    timings: {},
  };
}

/**
 * llama-tiny quantized with `recipe` (calibrated on one 64-token Brown sample when asked) and saved as an
 * llmq checkpoint in `dir`; returns the in-memory model.
 */
export async function savedTinyCheckpoint(
  backend: Backend,
  recipe: Recipe,
  dir: string,
  withCalibration = false,
): Promise<LlamaModel> {
  const tiny = `${MODELS}llama-tiny`;
  const model = loadLlama(tiny, backend);
  const calib = withCalibration
    ? await loadCalibration(loadTokenizer(tiny), {
        file: `${SHARED}data/text/brown.txt`,
        samples: 1,
        seqLen: 64,
        seed: 0,
      })
    : undefined;
  await quantizeModel(model, recipe, calib);
  await saveQuantized(model, recipe, testManifest(tiny), dir, false);
  return model;
}

/** The pre-tokenizer of Llama 3's tokenizer.json (llama.cpp's "llama-bpe"), for tokenizer variants of llama-tiny. */
export const LLAMA3_PRE_TOKENIZER = {
  type: 'Sequence',
  pretokenizers: [
    {
      type: 'Split',
      pattern: {
        Regex:
          "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      },
      behavior: 'Isolated',
      invert: false,
    },
    { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
  ],
};

/** Where a llama.cpp block type keeps its fp16 parameters: [values, bytes, offsets of the f16s] per block. */
const GGML_F16_FIELDS: Record<string, [number, number, number[]]> = {
  Q4_1: [32, 20, [0, 2]],
  Q5_0: [32, 22, [0]],
  Q5_1: [32, 24, [0, 2]],
  Q2_K: [256, 84, [80, 82]],
  Q3_K: [256, 110, [108]],
  Q4_K: [256, 144, [0, 2]],
  Q5_K: [256, 176, [0, 2]],
  Q6_K: [256, 210, [208]],
  IQ4_NL: [32, 18, [0]],
  IQ4_XS: [256, 136, [0]],
  IQ3_XXS: [256, 98, [0]],
  IQ3_S: [256, 110, [0]],
  IQ2_S: [256, 82, [0]],
};

/**
 * Random blocks of a llama.cpp type for n values: random codes and sub-block scales, every fp16
 * parameter (d, m, dmin) finite with magnitude in [size / 2, size).
 */
export function randomGgmlBlocks(type: keyof typeof GGML_F16_FIELDS, n: number, seed: number, size: number) {
  const [values, bytes, fields] = GGML_F16_FIELDS[type];
  const r = rng(seed);
  const out = Uint8Array.from({ length: (n / values) * bytes }, () => Math.floor(r.uniform() * 256));
  for (let b = 0; b < n / values; b++)
    for (const at of fields) {
      const v = (r.uniform() < 0.5 ? -1 : 1) * size * (0.5 + r.uniform() / 2);
      const h = f32ToF16(Float32Array.of(v))[0];
      out[b * bytes + at] = h & 0xff;
      out[b * bytes + at + 1] = h >> 8;
    }
  return out;
}

/** Random token ids as a calibration set of `samples` x `seqLen` (for tests that need no text). */
export function randomCalibration(seed: number, samples: number, seqLen: number): CalibSet {
  const random = rng(seed);
  return {
    ids: Int32Array.from({ length: samples * seqLen }, () => Math.floor(random.uniform() * 8192)),
    samples,
    seqLen,
    sampler: 'pool',
    source: 'test',
    sha256: '',
    textChars: 0,
    poolTokens: 0,
  };
}

const TRUE_SEQUENTIAL: LinearName[][] = [
  ['q_proj', 'k_proj', 'v_proj'],
  ['o_proj'],
  ['gate_proj', 'up_proj'],
  ['down_proj'],
];

/**
 * GPTQ's true-sequential loop as the reference code measures it, the pipeline's staging aside: each
 * group's Hessian from a whole-layer pass with a hook, each layer's outputs from the whole quantized
 * layer. All calibration samples in one chunk (as the pipeline has them at these sizes).
 */
export async function wholeLayerGptq(model: LlamaModel, recipe: Recipe, calib: CalibSet): Promise<void> {
  const b = model.backend;
  const step = recipe.steps[0] as GptqStep;
  const spec = recipe.weights as FormatSpec;
  const shape = { batch: calib.samples, seqLen: calib.seqLen };
  let h = model.embed(calib.ids);
  for (let layer = 0; layer < model.layers.length; layer++) {
    const lin = model.layers[layer].linears;
    for (const group of TRUE_SEQUENTIAL) {
      const [, cols] = lin[group[0]].weight.shape;
      const acc = new HessianAccumulator(cols);
      let gram: Promise<void> | undefined;
      const hooks = {
        linearInput: (_l: number, n: LinearName, x: Tensor) => {
          if (n !== group[0]) return undefined;
          const xT = b.transpose(x);
          gram = b.read(b.linear(xT, xT)).then((g) => acc.addGram(g, x.shape[0]));
          return undefined;
        },
      };
      model.layerForward(layer, h, shape, hooks).dispose();
      await gram;
      const H = acc.finish();
      const factor = factorHessian(H, cols, step);
      for (const name of group) {
        const w = await b.read(lin[name].weight);
        const q = gptq(w, lin[name].weight.shape[0], cols, H, spec, step, factor);
        setQuantizedWeight(model, layer, name, { encoded: q.encoded, gIdx: q.gIdx });
      }
    }
    const next = model.layerForward(layer, h, shape);
    h.dispose();
    h = next;
  }
  h.dispose();
}

/** Every linear weight of `a` equals `b`'s, bit for bit. */
export async function assertSameWeights(a: LlamaModel, b: LlamaModel): Promise<void> {
  for (let layer = 0; layer < a.layers.length; layer++)
    for (const name of LINEARS) {
      const got = await a.backend.read(a.layers[layer].linears[name].weight);
      const want = await b.backend.read(b.layers[layer].linears[name].weight);
      assert.deepEqual(got, want, `layer ${layer} ${name}`);
    }
}

/**
 * An importance matrix of the model from `llmq imatrix` (1 x 64 tokens of brown.txt) written to `file`,
 * and the importance row of a GGUF tensor name from it, in the form the block quantizers take.
 */
export async function smallImatrix(modelDir: string, file: string) {
  await promisify(execFile)('./bin/llmq', [
    'imatrix',
    modelDir,
    '--out',
    file,
    ...['--calib', `${SHARED}data/text/brown.txt`, '--calib-samples', '1', '--calib-seqlen', '64'],
  ]);
  const importance = readImatrix(file).importance;
  return (tensor: string) => {
    const imp = importance.get(`${tensor}.weight`);
    assert.ok(imp, tensor);
    return { importance: imp, cols: imp.length };
  };
}

/** The ggml type names of the named tensors (without `.weight`) of a GGUF file. */
export function ggufTypesIn(file: string, names: string[]): string[] {
  const g = readGguf(file);
  return names.map((n) => ggmlTypeName(g.tensors.find((t) => t.name === `${n}.weight`)?.type ?? -1));
}

/** The module hooks that run llmq's TypeScript (src/loader.mjs), for tests that start node themselves. */
export const LOADER = new URL('../src/loader.mjs', import.meta.url).href;
