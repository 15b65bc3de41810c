/**
 * `llmq export`: rewrites an llmq INT weight-only checkpoint in a layout other runtimes load
 * (AutoAWQ GEMM, GPTQ v1, compressed-tensors pack-quantized). The integer codes and zero points are
 * carried over unchanged; only the scales change, rounded to fp16 (the layouts' kernels are fp16),
 * and the summary reports how much that moves the dequantized weights. Everything that is not a
 * quantized linear (embeddings, norms, lm_head, biases, unquantized linears) is written in fp16.
 *
 * Each layout file turns one IntLinear (the llmq weight normalized to per-row scale groups) into its
 * tensors and writes its quantization_config; what a layout cannot represent is refused up front
 * (non-INT formats, activation quantization, salient columns, act_order g_idx where the layout has
 * none, bits or shapes its packing does not cover).
 *
 * The same files read these layouts back (io/import.ts, `llmq eval` on another tool's checkpoint):
 * a LayoutReader reads the quantization_config the way the tools that write it fill it, and unpacks
 * one linear into the form IntLinear describes, the exact inverse of its packing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fail } from '../../errors.ts';
import { type Encoded, formatName, type IntSpec, parseFormat } from '../../formats/index.ts';
import { ATTENTION_LINEARS, LINEARS, type LinearName, linearShapes } from '../../model/llama.ts';
import {
  COPIED_FILES,
  commitOutputDir,
  prepareOutputDir,
  type QuantizationConfig,
  readEncoded,
  readQuantizationConfig,
  TOOL_VERSION,
} from '../../quant/checkpoint.ts';
import type { Recipe } from '../../quant/recipe.ts';
import { bf16ToF32, f16ToF32, f32ToF16 } from '../../tensor/dtype.ts';
import type { ModelConfig } from '../config.ts';
import { loadModelConfig } from '../config-file.ts';
import { nonTrivialGIdx } from '../import-format.ts';
import { type Checkpoint, openCheckpoint, type TensorToWrite, writeSafetensors } from '../safetensors.ts';
import { AUTOAWQ } from './autoawq.ts';
import { COMPRESSED_TENSORS } from './compressed-tensors.ts';
import { GPTQ } from './gptq.ts';

export const EXPORT_LAYOUTS = ['autoawq', 'gptq', 'compressed-tensors'] as const;
export type ExportLayout = (typeof EXPORT_LAYOUTS)[number];

/** One quantized linear with per-row scale groups: value = (code - zero) * scale. */
export interface IntLinear {
  /** tensor name prefix, e.g. model.layers.0.self_attn.q_proj */
  prefix: string;
  /** output features (rows of the [out, in] weight) */
  rows: number;
  /** input features */
  cols: number;
  bits: number;
  symmetric: boolean;
  /** input columns per scale group (cols when there is one scale per row) */
  group: number;
  /** [rows, cols] row-major unsigned codes (symmetric: offset binary, q + 2^(bits-1)) */
  codes: Uint8Array;
  /** [rows, cols / group] row-major fp16 bit patterns */
  scales: Uint16Array;
  /** [rows, cols / group] zero points; 2^(bits-1) for symmetric formats */
  zeros: Uint8Array;
  /** scale group of each input column, only when it is not column / group (GPTQ act_order) */
  gIdx?: Int32Array;
}

/** What the whole checkpoint holds, for the layout's checks and its quantization_config. */
export interface ExportSettings {
  bits: number;
  symmetric: boolean;
  /** group size along the input dimension; -1 for one scale per output channel */
  group: number;
  /** some linear stores a non-trivial g_idx (GPTQ act_order) */
  actOrder: boolean;
  recipe: Recipe;
  /** module names (model.layers.i.mlp.down_proj) of linears left in full precision */
  unquantized: string[];
}

export interface LayoutWriter {
  readonly name: ExportLayout;
  /** Fails (one line) when the layout cannot represent these settings. */
  check(s: ExportSettings, source: string): void;
  linearTensors(lin: IntLinear): TensorToWrite[];
  quantizationConfig(s: ExportSettings): Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------------
// The reverse direction (io/import.ts): each layout file also unpacks what it packs and reads its
// quantization_config, as the tools that write these layouts in the wild fill it.

/** One linear unpacked from a layout: IntLinear with the stored scales widened to f32. */
export interface UnpackedLinear extends Omit<IntLinear, 'scales'> {
  /** [rows, cols / group] row-major */
  scales: Float32Array;
}

/** How a quantization_config declares one linear. */
export interface LinearSettings {
  bits: number;
  /** group size along the input dimension; -1 for one scale per output channel */
  group: number;
  symmetric: boolean;
  /** GPTQ act_order / compressed-tensors actorder "group": g_idx may reorder the groups */
  actOrder: boolean;
  /** GPTQ: added to the stored zero points (1 for checkpoint_format gptq, 0 for gptq_v2) */
  zeroOffset?: number;
}

/** A foreign checkpoint's quantization_config, read. */
export interface ImportSettings {
  layout: ExportLayout;
  /** one line: layout, bits, group, symmetry and variant as the config states them */
  describe: string;
  /** settings of the linear `module` (model.layers.i.mlp.down_proj); undefined: left in full precision */
  linear(module: string): LinearSettings | undefined;
}

/** A quantization_config object, read with checks that name the field on failure. */
export interface ConfigFields {
  /** "<file>: quantization_config" (nested: "...config_groups.group_0.weights") */
  readonly where: string;
  has(key: string): boolean;
  /** the first of `keys` present (aliases must agree); `fallback` when none is */
  int(keys: string | string[], fallback?: number): number;
  bool(keys: string | string[], fallback?: boolean): boolean;
  str(keys: string | string[]): string | undefined;
  /** an array of strings; undefined when absent or null */
  strings(key: string): string[] | undefined;
  /** a nested object; undefined when absent or null */
  sub(key: string): ConfigFields | undefined;
  /** the keys of the object */
  keys(): string[];
  /** the raw value of a field */
  value(key: string): unknown;
  /** a Python `re` pattern found at `key`, as re.match applies it (anchored at the start) */
  pattern(key: string, source: string): RegExp;
  fail(key: string, message: string): never;
}

/** One linear's stored tensors (`<prefix>.<suffix>`), with checks that name the tensor on failure. */
export interface StoredTensors {
  readonly prefix: string;
  readonly rows: number;
  readonly cols: number;
  has(suffix: string): boolean;
  shape(suffix: string): number[];
  /** int32 words; fails unless the tensor is I32 of `shape` */
  words(suffix: string, shape: number[]): Int32Array;
  /** integer values of any integer dtype; fails unless of `shape` */
  ints(suffix: string, shape: number[]): Int32Array;
  /** F16 / BF16 / F32 values widened to f32; fails unless of `shape` */
  floats(suffix: string, shape: number[]): Float32Array;
  /** a g_idx (the scale group of each input column), every entry checked to name one of nG groups */
  groupIndex(suffix: string, nG: number): Int32Array;
  /** fails with one line naming the tensor */
  fail(suffix: string, message: string): never;
}

export interface LayoutReader {
  readonly name: ExportLayout;
  /** the tensor suffix whose presence marks a linear as stored quantized */
  readonly packedSuffix: string;
  /** Reads quantization_config; refuses (one line) the variants it cannot unpack. */
  settings(c: ConfigFields): ImportSettings;
  unpack(t: StoredTensors, s: LinearSettings): UnpackedLinear;
}

const WRITERS: Record<ExportLayout, LayoutWriter> = {
  autoawq: AUTOAWQ,
  gptq: GPTQ,
  'compressed-tensors': COMPRESSED_TENSORS,
};

/** Tensors of a quantized linear besides `<p>.qweight`, consumed with it. */
const QUANT_SUFFIXES = [
  'scales',
  'qzeros',
  'g_idx',
  'exponents',
  'scale_codes',
  'global_scale',
  'salient_columns',
  'salient_values',
  'input_scale',
];

const LINEAR_PREFIX_RE = /^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$/;

export interface ExportOptions {
  force?: boolean;
}

export interface ExportSummary {
  layout: ExportLayout;
  source: string;
  out: string;
  weight_format: string;
  bits: number;
  /** -1: one scale per output channel */
  group_size: number;
  symmetric: boolean;
  act_order: boolean;
  quantized_linears: number;
  unquantized_linears: string[];
  fp16_tensors: number;
  scales: number;
  /** scales whose value changed when rounded to fp16 */
  scales_changed: number;
  /** largest |w16 - w| / |w| over the non-zero dequantized weights, w16 with the fp16 scale */
  scale_max_rel_change: number;
  out_bytes: number;
  seconds: number;
}

export function isExportLayout(s: string): s is ExportLayout {
  return (EXPORT_LAYOUTS as readonly string[]).includes(s);
}

function moduleName(layer: number, name: LinearName): string {
  const block = (ATTENTION_LINEARS as readonly string[]).includes(name) ? 'self_attn' : 'mlp';
  return `model.layers.${layer}.${block}.${name}`;
}

/** vLLM fuses q/k/v_proj and gate/up_proj into one layer, which must be all quantized or none. */
function checkFusedTargets(src: string, targets: readonly LinearName[]): void {
  for (const fused of [
    ['q_proj', 'k_proj', 'v_proj'],
    ['gate_proj', 'up_proj'],
  ] as LinearName[][]) {
    const inside = fused.filter((n) => targets.includes(n));
    if (inside.length > 0 && inside.length < fused.length)
      fail(
        `${src}: recipe targets quantize ${inside.join(', ')} but not all of ${fused.join(', ')}, which vLLM fuses into one layer`,
      );
  }
}

function intSpecOf(src: string, q: QuantizationConfig): IntSpec {
  if (!q.weight_format) return fail(`${src}: the checkpoint has no quantized weights (weight_format null)`);
  const spec = parseFormat(q.weight_format);
  if (spec.kind !== 'int')
    fail(
      `${src}: weight format ${q.weight_format} is not INT; autoawq, gptq and compressed-tensors pack-quantized hold integer weights only`,
    );
  if (q.activation_format)
    fail(
      `${src}: recipe ${q.recipe.name} quantizes activations (${q.activation_format}); these layouts are weight-only (W4A16 / W8A16)`,
    );
  if (q.recipe.kvCache)
    fail(
      `${src}: recipe ${q.recipe.name} quantizes the KV cache (${formatName(q.recipe.kvCache)}), which these layouts cannot express`,
    );
  if (q.recipe.steps.some((s) => s.method === 'mixed'))
    fail(
      `${src}: recipe ${q.recipe.name} keeps salient columns in full precision, which these layouts cannot hold`,
    );
  return spec;
}

function settingsOf(
  src: string,
  q: QuantizationConfig,
  spec: IntSpec,
  ckpt: Checkpoint,
  config: ModelConfig,
): ExportSettings {
  checkFusedTargets(src, q.recipe.targets);
  const unquantized: string[] = [];
  let actOrder = false;
  for (let i = 0; i < config.numLayers; i++)
    for (const name of LINEARS) {
      const prefix = moduleName(i, name);
      if (!ckpt.has(`${prefix}.qweight`)) unquantized.push(prefix);
      else if (ckpt.has(`${prefix}.salient_columns`))
        fail(`${src}: tensor "${prefix}.salient_columns": salient columns cannot be held by these layouts`);
      else if (ckpt.has(`${prefix}.g_idx`)) {
        const group = spec.granularity === 'group' ? (spec.group as number) : linearShapes(config)[name][1];
        const gIdx = ckpt.read(`${prefix}.g_idx`).data as Int32Array;
        if (nonTrivialGIdx(gIdx, group)) actOrder = true;
      }
    }
  if (unquantized.length === config.numLayers * LINEARS.length)
    fail(`${src}: no quantized linear found (no <linear>.qweight tensors)`);
  return {
    bits: spec.bits,
    symmetric: spec.symmetric,
    group: spec.granularity === 'group' ? (spec.group as number) : -1,
    actOrder,
    recipe: q.recipe,
    unquantized,
  };
}

/** Per-row scale groups: a per-tensor scale (and zero point) is repeated on every row. */
function perRowParams(
  src: string,
  prefix: string,
  enc: Encoded,
  spec: IntSpec,
): { scales: Float32Array; zeros: Uint8Array } {
  const { rows } = enc;
  const perTensor = spec.granularity === 'tensor';
  const n = perTensor ? rows : enc.scales.length;
  const scales = perTensor ? new Float32Array(n).fill(enc.scales[0]) : enc.scales;
  const implied = 2 ** (spec.bits - 1);
  let zeros: Uint8Array;
  if (spec.symmetric) zeros = new Uint8Array(n).fill(implied);
  else if (!enc.zeros) return fail(`${src}: tensor "${prefix}.qzeros" is missing (asymmetric INT)`);
  else zeros = perTensor ? new Uint8Array(n).fill(enc.zeros[0]) : enc.zeros;
  return { scales, zeros };
}

interface ScaleStats {
  scales: number;
  changed: number;
  maxRel: number;
}

/**
 * The scales as fp16; counts the changed ones and the largest relative change of a scale that
 * multiplies a non-zero (code - zero), which is the relative change of those dequantized weights.
 */
function fp16Scales(
  src: string,
  lin: Omit<IntLinear, 'scales'>,
  scales: Float32Array,
  stats: ScaleStats,
): Uint16Array {
  const bits16 = f32ToF16(scales);
  const back = f16ToF32(bits16);
  const nG = lin.cols / lin.group;
  const used = new Uint8Array(scales.length);
  for (let r = 0; r < lin.rows; r++)
    for (let c = 0; c < lin.cols; c++) {
      const s = r * nG + (lin.gIdx ? lin.gIdx[c] : Math.floor(c / lin.group));
      if (lin.codes[r * lin.cols + c] !== lin.zeros[s]) used[s] = 1;
    }
  for (let i = 0; i < scales.length; i++) {
    if (!Number.isFinite(back[i]))
      fail(
        `${src}: tensor "${lin.prefix}.scales" value ${scales[i]} does not fit fp16 (max 65504), which these layouts store scales in`,
      );
    if (back[i] !== scales[i]) stats.changed++;
    if (used[i]) stats.maxRel = Math.max(stats.maxRel, Math.abs(back[i] - scales[i]) / Math.abs(scales[i]));
  }
  stats.scales += scales.length;
  return bits16;
}

function readIntLinear(
  src: string,
  ckpt: Checkpoint,
  prefix: string,
  spec: IntSpec,
  [rows, cols]: [number, number],
  stats: ScaleStats,
): IntLinear {
  const enc = readEncoded(ckpt, prefix, spec, rows, cols);
  const group = spec.granularity === 'group' ? (spec.group as number) : cols;
  const stored = ckpt.has(`${prefix}.g_idx`) ? (ckpt.read(`${prefix}.g_idx`).data as Int32Array) : undefined;
  const gIdx = nonTrivialGIdx(stored, group);
  const { scales, zeros } = perRowParams(src, prefix, enc, spec);
  const base = {
    prefix,
    rows,
    cols,
    bits: spec.bits,
    symmetric: spec.symmetric,
    group,
    codes: enc.codes,
    zeros,
  };
  const lin = gIdx ? { ...base, gIdx } : base;
  return { ...lin, scales: fp16Scales(src, lin, scales, stats) };
}

/** A plain tensor in fp16, refusing values beyond the fp16 range. */
function fp16Tensor(src: string, ckpt: Checkpoint, name: string): TensorToWrite {
  const t = ckpt.read(name);
  if (t.dtype === 'F16' || !(t.dtype === 'BF16' || t.dtype === 'F32' || t.dtype === 'F64'))
    return { name, dtype: t.dtype, shape: t.shape, data: t.data };
  const values =
    t.dtype === 'BF16'
      ? bf16ToF32(t.data as Uint16Array)
      : t.dtype === 'F64'
        ? Float32Array.from(t.data as Float64Array)
        : (t.data as Float32Array);
  const half = f32ToF16(values);
  for (let i = 0; i < half.length; i++)
    if ((half[i] & 0x7fff) === 0x7c00 && Number.isFinite(values[i]))
      fail(
        `${src}: tensor "${name}" value ${values[i]} at index ${i} does not fit fp16 (max 65504); the exported layouts run in fp16`,
      );
  return { name, dtype: 'F16', shape: t.shape, data: half };
}

function collectTensors(
  src: string,
  ckpt: Checkpoint,
  config: ModelConfig,
  spec: IntSpec,
  writer: LayoutWriter,
  stats: ScaleStats,
): { tensors: TensorToWrite[]; linears: number; plain: number } {
  const tensors: TensorToWrite[] = [];
  let linears = 0;
  let plain = 0;
  for (const name of ckpt.names()) {
    const dot = name.lastIndexOf('.');
    const prefix = name.slice(0, dot);
    const suffix = name.slice(dot + 1);
    if (suffix === 'qweight') {
      const m = LINEAR_PREFIX_RE.exec(prefix);
      if (!m || !(LINEARS as readonly string[]).includes(m[2]))
        fail(`${src}: tensor "${name}" is not a decoder-layer linear of a Llama-family model`);
      const shape = linearShapes(config)[m[2] as LinearName];
      tensors.push(...writer.linearTensors(readIntLinear(src, ckpt, prefix, spec, shape, stats)));
      linears++;
    } else if (!(QUANT_SUFFIXES.includes(suffix) && ckpt.has(`${prefix}.qweight`))) {
      tensors.push(fp16Tensor(src, ckpt, name));
      plain++;
    }
  }
  return { tensors, linears, plain };
}

function exportConfig(
  config: ModelConfig,
  q: QuantizationConfig,
  writer: LayoutWriter,
  settings: ExportSettings,
): Record<string, unknown> {
  const { quantization_config: _, ...raw } = config.raw;
  return {
    ...raw,
    torch_dtype: 'float16',
    ...('dtype' in raw ? { dtype: 'float16' } : {}),
    quantization_config: writer.quantizationConfig(settings),
    llmq_export: {
      tool_version: TOOL_VERSION,
      layout: writer.name,
      recipe: q.recipe.name,
      weight_format: q.weight_format,
      source_model: q.manifest?.source_model,
      source_sha256: q.manifest?.source_sha256,
    },
  };
}

function dirBytes(dir: string): number {
  return fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
}

/** Writes the llmq checkpoint in `srcDir` to `outDir` in `layout`; atomic, refuses an existing out. */
export function exportCheckpoint(
  srcDir: string,
  layout: ExportLayout,
  outDir: string,
  opts: ExportOptions = {},
): ExportSummary {
  const start = performance.now();
  if (!isExportLayout(layout))
    fail(`export: unknown layout "${layout}" (layouts: ${EXPORT_LAYOUTS.join(', ')})`);
  if (path.resolve(srcDir) === path.resolve(outDir))
    fail(`export: --out ${outDir} is the source checkpoint; write the export elsewhere`);
  const q = readQuantizationConfig(srcDir);
  if (!q) return fail(`${srcDir}: config.json has no quantization_config; not an llmq quantized checkpoint`);
  const spec = intSpecOf(srcDir, q);
  const config = loadModelConfig(srcDir);
  const writer = WRITERS[layout];
  const ckpt = openCheckpoint(srcDir);
  try {
    const settings = settingsOf(srcDir, q, spec, ckpt, config);
    writer.check(settings, srcDir);
    const stats: ScaleStats = { scales: 0, changed: 0, maxRel: 0 };
    const tmp = prepareOutputDir(outDir, opts.force ?? false);
    let counts: { linears: number; plain: number };
    try {
      const { tensors, ...rest } = collectTensors(srcDir, ckpt, config, spec, writer, stats);
      counts = rest;
      writeSafetensors(path.join(tmp, 'model.safetensors'), tensors, { format: 'pt' });
      const json = exportConfig(config, q, writer, settings);
      fs.writeFileSync(path.join(tmp, 'config.json'), `${JSON.stringify(json, null, 2)}\n`);
      for (const f of COPIED_FILES) {
        const from = path.join(srcDir, f);
        if (fs.existsSync(from)) fs.copyFileSync(from, path.join(tmp, f));
      }
      commitOutputDir(tmp, outDir);
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    return {
      layout,
      source: srcDir,
      out: outDir,
      weight_format: formatName(spec),
      bits: settings.bits,
      group_size: settings.group,
      symmetric: settings.symmetric,
      act_order: settings.actOrder,
      quantized_linears: counts.linears,
      unquantized_linears: settings.unquantized,
      fp16_tensors: counts.plain,
      scales: stats.scales,
      scales_changed: stats.changed,
      scale_max_rel_change: stats.maxRel,
      out_bytes: dirBytes(outDir),
      seconds: (performance.now() - start) / 1000,
    };
  } finally {
    ckpt.close();
  }
}
