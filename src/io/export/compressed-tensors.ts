/**
 * compressed-tensors "pack-quantized" layout (llm-compressor's W4A16 / W8A16 checkpoints, loaded by
 * vLLM's compressed-tensors WNA16 scheme and transformers' compressed-tensors integration). Details
 * read from compressed-tensors src/compressed_tensors/compressors/quantized_compressors/
 * pack_quantized.py (pack_to_int32 / unpack_from_int32, compress_module: packed zero points),
 * quantization/quant_args.py and quant_config.py (config keys, strategies, actorder), and vLLM
 * compressed_tensors/schemes/compressed_tensors_wNa16.py (weight_zero_point [out/pf, in/g]).
 *
 * compressed-tensors quantizes to signed integers q in [-2^(b-1), 2^(b-1) - 1] with a signed zero
 * point zp in the same range, w = (q - zp) * s, and packs q + 2^(b-1): exactly llmq's unsigned codes
 * and zero points (llmq code = q + 2^(b-1), zero = zp + 2^(b-1)), so they are packed unchanged.
 * Per linear (weight [out, in], pf = 32 / bits):
 *   weight_packed     [out, in/pf]     int32: codes of inputs j*pf + k at bits bits*k (low first)
 *   weight_scale      [out, in/g]      fp16 (channel strategy: [out, 1])
 *   weight_zero_point [out/pf, in/g]   int32, asymmetric only: packed along the output dimension
 *   weight_shape      [2]              int64 [out, in]
 *   weight_g_idx      [in]             int32, with actorder "group" (GPTQ act_order) only
 *
 * Reading (COMPRESSED_TENSORS_READER): format "pack-quantized" (top level, or per config group under
 * "mixed-precision"), quantization_status "compressed"; each config group's weights must be type int,
 * 2..8 bits (pack_to_int32 puts floor(32 / bits) codes in a word, padding the last one), strategy
 * group or channel, symmetric or not, static; groups that also quantize activations, the KV cache,
 * sparse or transformed checkpoints, and the other formats (float-quantized FP8, naive-quantized,
 * int-quantized, marlin-24, nvfp4-pack-quantized, sparse ones) are refused. Targets and `ignore`
 * match as compressed-tensors matches them: the class name "Linear", an exact module name, or
 * "re:<pattern>" applied with re.match; a linear two groups target with different settings is
 * refused. Zero points are read packed ([ceil(out/pf), in/g] int32) or, as older versions wrote
 * them, one signed integer per scale ([out, in/g]); symmetric schemes must hold zero there.
 */
import { fail } from '../../errors.ts';
import type { TensorToWrite } from '../safetensors.ts';
import type {
  ConfigFields,
  ExportSettings,
  ImportSettings,
  IntLinear,
  LayoutReader,
  LayoutWriter,
  LinearSettings,
  StoredTensors,
  UnpackedLinear,
} from './index.ts';

function packRows(lin: IntLinear, pf: number): Int32Array {
  const { rows: out, cols: inp, bits, codes } = lin;
  const words = inp / pf;
  const packed = new Int32Array(out * words);
  for (let o = 0; o < out; o++)
    for (let j = 0; j < words; j++) {
      let word = 0;
      for (let k = 0; k < pf; k++) word |= codes[o * inp + j * pf + k] << (bits * k);
      packed[o * words + j] = word;
    }
  return packed;
}

function packZeroPoints(lin: IntLinear, pf: number, nG: number): Int32Array {
  const { rows: out, bits, zeros } = lin;
  const packed = new Int32Array((out / pf) * nG);
  for (let j = 0; j < out / pf; j++)
    for (let g = 0; g < nG; g++) {
      let word = 0;
      for (let k = 0; k < pf; k++) word |= zeros[(j * pf + k) * nG + g] << (bits * k);
      packed[j * nG + g] = word;
    }
  return packed;
}

function linearTensors(lin: IntLinear): TensorToWrite[] {
  const { prefix, rows: out, cols: inp, group } = lin;
  const pf = 32 / lin.bits;
  if (inp % pf !== 0)
    fail(`compressed-tensors: ${prefix} has ${inp} input features, not a multiple of ${pf}`);
  if (!lin.symmetric && out % pf !== 0)
    fail(
      `compressed-tensors: ${prefix} has ${out} output features, not a multiple of ${pf} (packed zero points)`,
    );
  const nG = inp / group;
  const tensors: TensorToWrite[] = [
    { name: `${prefix}.weight_packed`, dtype: 'I32', shape: [out, inp / pf], data: packRows(lin, pf) },
    { name: `${prefix}.weight_scale`, dtype: 'F16', shape: [out, nG], data: lin.scales },
    {
      name: `${prefix}.weight_shape`,
      dtype: 'I64',
      shape: [2],
      data: BigInt64Array.from([BigInt(out), BigInt(inp)]),
    },
  ];
  if (!lin.symmetric)
    tensors.push({
      name: `${prefix}.weight_zero_point`,
      dtype: 'I32',
      shape: [out / pf, nG],
      data: packZeroPoints(lin, pf, nG),
    });
  if (lin.gIdx) tensors.push({ name: `${prefix}.weight_g_idx`, dtype: 'I32', shape: [inp], data: lin.gIdx });
  return tensors;
}

function check(s: ExportSettings, source: string): void {
  if (s.bits !== 4 && s.bits !== 8)
    fail(`${source}: compressed-tensors pack-quantized holds INT4 and INT8, the checkpoint is INT${s.bits}`);
}

function weightArgs(s: ExportSettings): Record<string, unknown> {
  const channel = s.group === -1;
  return {
    num_bits: s.bits,
    type: 'int',
    symmetric: s.symmetric,
    strategy: channel ? 'channel' : 'group',
    group_size: channel ? null : s.group,
    block_structure: null,
    dynamic: false,
    actorder: s.actOrder ? 'group' : null,
    observer: 'minmax',
    observer_kwargs: {},
  };
}

export const COMPRESSED_TENSORS: LayoutWriter = {
  name: 'compressed-tensors',
  check,
  linearTensors,
  quantizationConfig: (s) => ({
    quant_method: 'compressed-tensors',
    format: 'pack-quantized',
    quantization_status: 'compressed',
    config_groups: {
      group_0: {
        targets: ['Linear'],
        weights: weightArgs(s),
        input_activations: null,
        output_activations: null,
      },
    },
    ignore: ['lm_head', ...s.unquantized],
    kv_cache_scheme: null,
    global_compression_ratio: null,
  }),
};

// ---------------------------------------------------------------------------------------------
// Reading

function unpackRows(t: StoredTensors, bits: number, pf: number): Uint8Array {
  const { rows: out, cols: inp } = t;
  const mask = 2 ** bits - 1;
  const words = Math.ceil(inp / pf);
  const packed = t.words('weight_packed', [out, words]);
  const codes = new Uint8Array(out * inp);
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inp; i++)
      codes[o * inp + i] = (packed[o * words + Math.floor(i / pf)] >>> (bits * (i % pf))) & mask;
  return codes;
}

/** Zero points as unsigned codes (signed zero point + 2^(bits-1)), packed or one integer per scale. */
function unpackZeroPoints(t: StoredTensors, s: LinearSettings, pf: number, nG: number): Uint8Array {
  const out = t.rows;
  const half = 2 ** (s.bits - 1);
  const zeros = new Uint8Array(out * nG);
  if (!t.has('weight_zero_point')) {
    if (!s.symmetric) t.fail('weight_zero_point', 'is missing (asymmetric scheme)');
    return zeros.fill(half);
  }
  const [d0, d1] = t.shape('weight_zero_point');
  if (d0 === out && d1 === nG) {
    const signed = t.ints('weight_zero_point', [out, nG]);
    for (let i = 0; i < zeros.length; i++) {
      if (!(signed[i] >= -half && signed[i] < half))
        t.fail('weight_zero_point', `value ${signed[i]} at index ${i} is outside INT${s.bits}`);
      zeros[i] = signed[i] + half;
    }
  } else {
    const mask = 2 ** s.bits - 1;
    const packed = t.words('weight_zero_point', [Math.ceil(out / pf), nG]);
    for (let o = 0; o < out; o++)
      for (let g = 0; g < nG; g++)
        zeros[o * nG + g] = (packed[Math.floor(o / pf) * nG + g] >>> (s.bits * (o % pf))) & mask;
  }
  const off = s.symmetric ? zeros.findIndex((z) => z !== half) : -1;
  if (off >= 0)
    t.fail('weight_zero_point', `holds a non-zero zero point (${zeros[off] - half}) in a symmetric scheme`);
  return zeros;
}

function checkShape(t: StoredTensors): void {
  if (!t.has('weight_shape')) return;
  const shape = [...t.ints('weight_shape', [2])];
  if (shape[0] !== t.rows || shape[1] !== t.cols)
    t.fail('weight_shape', `is [${shape.join(', ')}], config.json implies [${t.rows}, ${t.cols}]`);
}

function groupIndex(t: StoredTensors, nG: number): Int32Array | undefined {
  return t.has('weight_g_idx') ? t.groupIndex('weight_g_idx', nG) : undefined;
}

function unpack(t: StoredTensors, s: LinearSettings): UnpackedLinear {
  const { prefix, rows: out, cols: inp } = t;
  const pf = Math.floor(32 / s.bits);
  checkShape(t);
  const group = s.group === -1 ? inp : s.group;
  if (inp % group !== 0)
    t.fail('weight_scale', `cannot be read: group size ${group} does not divide ${inp} input features`);
  const nG = inp / group;
  const codes = unpackRows(t, s.bits, pf);
  const zeros = unpackZeroPoints(t, s, pf, nG);
  const scales = t.floats('weight_scale', [out, nG]);
  const gIdx = groupIndex(t, nG);
  const lin = {
    prefix,
    rows: out,
    cols: inp,
    bits: s.bits,
    symmetric: s.symmetric,
    group,
    codes,
    scales,
    zeros,
  };
  return gIdx ? { ...lin, gIdx } : lin;
}

const REFUSED_FORMATS =
  'float-quantized (FP8), naive-quantized and int-quantized (unpacked INT8) and the others are not read';

function checkFormat(c: ConfigFields, key: string, format: string | undefined): void {
  if (format !== 'pack-quantized')
    c.fail(key, `"${format}": llmq reads compressed-tensors "pack-quantized" only; ${REFUSED_FORMATS}`);
}

/** Refuses what would make the weights alone not describe the model's computation. */
function checkWeightOnly(c: ConfigFields): void {
  const status = c.str('quantization_status');
  if (status !== undefined && status !== 'compressed')
    c.fail('quantization_status', `"${status}": llmq reads compressed checkpoints only`);
  if (c.value('kv_cache_scheme') != null)
    c.fail('kv_cache_scheme', 'is set: the KV cache is quantized, which llmq does not model');
  const sparsity = c.sub('sparsity_config');
  const sparseFormat = sparsity?.str('format');
  if (sparsity && sparseFormat !== 'dense')
    c.fail('sparsity_config', `format "${sparseFormat}": sparse-compressed weights are not read`);
  if (c.value('transform_config') != null)
    c.fail('transform_config', 'is set: transformed (rotated) checkpoints are not read');
}

type Matcher = (module: string) => boolean;

/** A compressed-tensors target / ignore entry: class name Linear, exact module name or "re:" pattern. */
function matcher(c: ConfigFields, key: string, target: string): Matcher {
  if (target === 'Linear') return () => true;
  if (!target.startsWith('re:')) return (module) => module === target;
  const re = c.pattern(key, target.slice(3));
  return (module) => re.test(module);
}

interface Scheme {
  name: string;
  targets: Matcher[];
  settings: LinearSettings;
}

function weightSettings(w: ConfigFields): LinearSettings {
  const type = w.str('type') ?? 'int';
  if (type !== 'int') w.fail('type', `"${type}": llmq reads integer weights only`);
  const bits = w.int('num_bits');
  if (!(bits >= 2 && bits <= 8)) w.fail('num_bits', `${bits}: llmq reads INT2..INT8`);
  if (w.bool('dynamic', false)) w.fail('dynamic', 'is true: weights quantized at run time are not read');
  const strategy = w.str('strategy') ?? (w.has('group_size') ? 'group' : 'tensor');
  if (strategy !== 'group' && strategy !== 'channel')
    w.fail('strategy', `"${strategy}": llmq reads the group and channel strategies`);
  const group = strategy === 'group' ? w.int('group_size') : -1;
  if (group !== -1 && group < 1) w.fail('group_size', `${group}: expected a positive group size`);
  const order = w.value('actorder');
  return {
    bits,
    group,
    symmetric: w.bool('symmetric', true),
    actOrder: order === true || order === 'group' || order === 'dynamic',
  };
}

function scheme(c: ConfigFields, name: string, format: string | undefined): Scheme {
  const g = c.sub(name) ?? c.fail(name, 'must be an object');
  checkFormat(g, 'format', g.str('format') ?? format);
  for (const key of ['input_activations', 'output_activations'])
    if (g.value(key) != null)
      g.fail(key, 'is set: llmq reads weight-only schemes (activations quantized too)');
  const targets = g.strings('targets') ?? g.fail('targets', 'is missing');
  const weights = g.sub('weights') ?? g.fail('weights', 'is missing');
  return { name, targets: targets.map((t) => matcher(g, 'targets', t)), settings: weightSettings(weights) };
}

function describeScheme(s: LinearSettings): string {
  return `int${s.bits} ${s.group === -1 ? 'per channel' : `g${s.group}`}${s.symmetric ? ' sym' : ''}${s.actOrder ? ' actorder' : ''}`;
}

function settings(c: ConfigFields): ImportSettings {
  const format = c.str('format');
  if (format !== 'mixed-precision') checkFormat(c, 'format', format);
  checkWeightOnly(c);
  const groups = c.sub('config_groups') ?? c.fail('config_groups', 'is missing');
  const schemes = groups
    .keys()
    .map((name) => scheme(groups, name, format === 'mixed-precision' ? undefined : format));
  const ignore = (c.strings('ignore') ?? []).map((t) => matcher(c, 'ignore', t));
  return {
    layout: 'compressed-tensors',
    describe: `compressed-tensors pack-quantized ${schemes.map((s) => describeScheme(s.settings)).join(' + ')}`,
    linear(module) {
      if (ignore.some((m) => m(module))) return undefined;
      const hits = schemes.filter((s) => s.targets.some((m) => m(module)));
      const first = JSON.stringify(hits[0]?.settings);
      const other = hits.find((s) => JSON.stringify(s.settings) !== first);
      if (other)
        groups.fail(hits[0].name, `and ${other.name} both target ${module} with different weight settings`);
      return hits[0]?.settings;
    },
  };
}

export const COMPRESSED_TENSORS_READER: LayoutReader = {
  name: 'compressed-tensors',
  packedSuffix: 'weight_packed',
  settings,
  unpack,
};
