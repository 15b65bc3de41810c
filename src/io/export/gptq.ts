/**
 * GPTQ v1 layout (AutoGPTQ / GPTQModel checkpoint_format "gptq", loaded by transformers' GPTQ
 * integration and vLLM gptq / gptq_marlin). Details read from AutoGPTQ
 * auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py (QuantLinear.pack and its torch dequantization),
 * auto_gptq/quantization/config.py (BaseQuantizeConfig.to_dict keys), and vLLM
 * model_executor/layers/quantization/gptq.py (shapes, g_idx, zeros + 1 on load).
 *
 * Per linear (weight [out, in], pf = 32 / bits codes per int32, g = group, -1 meaning g = in):
 *   qweight [in/pf, out]    int32: word r of output column o holds the codes of inputs r*pf + k at
 *                           bits bits*k.. (low bits first, packed along the input dimension)
 *   qzeros  [in/g, out/pf]  int32: (zero - 1) & (2^bits - 1), packed along the output dimension
 *   scales  [in/g, out]     fp16
 *   g_idx   [in]            int32: scale group of each input (act_order), else i / g
 *   w[o, i] = (q - (stored zero + 1)) * s[g_idx[i], o].
 * Loaders add the 1 back after masking, so a zero point of 0 would load as 2^bits: v1 cannot store it
 * and such a checkpoint is refused. Symmetric formats are written with the implied zero 2^(bits-1)
 * (stored 2^(bits-1) - 1), which is what sym=true kernels (vLLM gptq_marlin uint4b8) assume.
 * Only 4 and 8 bits: they pack whole codes per int32 (3 bits straddles words in this layout).
 *
 * Reading (GPTQ_READER): bits 2, 4 and 8; group_size (default 128, -1 per channel), sym (default
 * true), desc_act; checkpoint_format (GPTQModel also writes it as `format`) absent or "gptq", or
 * "gptq_v2", which stores the zero points without the -1 (GPTQModel's fix for zero 0); Marlin,
 * BitBLAS and other repacked formats are refused. A zero point is stored + 1 as loaders compute it,
 * so v1's stored 2^bits - 1 reads as 2^bits. g_idx is applied when present (absent: input / group).
 * sym checkpoints must hold the implied zero 2^(bits-1) everywhere (vLLM's gptq_marlin ignores
 * qzeros then, AutoGPTQ applies them: the two agree only then). Linears left unquantized come from
 * transformers' modules_in_block_to_quantize (matched as name suffixes) and GPTQModel's `dynamic`
 * ("-:" patterns skip a module; other patterns override bits / group_size / sym / desc_act; first
 * match wins, patterns applied with re.match to the full module name).
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

function packInputs(lin: IntLinear, pf: number): Int32Array {
  const { rows: out, cols: inp, bits, codes } = lin;
  const packed = new Int32Array((inp / pf) * out);
  for (let r = 0; r < inp / pf; r++)
    for (let o = 0; o < out; o++) {
      let word = 0;
      for (let k = 0; k < pf; k++) word |= codes[o * inp + r * pf + k] << (bits * k);
      packed[r * out + o] = word;
    }
  return packed;
}

function packZeros(lin: IntLinear, pf: number, nG: number): Int32Array {
  const { rows: out, bits, zeros } = lin;
  const mask = 2 ** bits - 1;
  const packed = new Int32Array(nG * (out / pf));
  for (let g = 0; g < nG; g++)
    for (let j = 0; j < out / pf; j++) {
      let word = 0;
      for (let k = 0; k < pf; k++) word |= ((zeros[(j * pf + k) * nG + g] - 1) & mask) << (bits * k);
      packed[g * (out / pf) + j] = word;
    }
  return packed;
}

function checkShapes(lin: IntLinear, pf: number): void {
  const { prefix, rows: out, cols: inp } = lin;
  if (inp % pf !== 0 || out % pf !== 0)
    fail(
      `gptq: ${prefix} is [${out}, ${inp}]; INT${lin.bits} packs ${pf} per int32, which must divide both dimensions`,
    );
  if (lin.symmetric) return;
  let zeroPoints0 = 0;
  for (const z of lin.zeros) if (z === 0) zeroPoints0++;
  if (zeroPoints0 > 0)
    fail(
      `gptq: ${prefix} has ${zeroPoints0} zero points equal to 0, which GPTQ v1 cannot store (it stores zero - 1 and loaders add 1 back); export to compressed-tensors or autoawq instead`,
    );
}

function linearTensors(lin: IntLinear): TensorToWrite[] {
  const pf = 32 / lin.bits;
  checkShapes(lin, pf);
  const { prefix, rows: out, cols: inp, group, scales } = lin;
  const nG = inp / group;
  const scalesT = new Uint16Array(nG * out);
  for (let o = 0; o < out; o++) for (let g = 0; g < nG; g++) scalesT[g * out + o] = scales[o * nG + g];
  const gIdx = lin.gIdx ?? Int32Array.from({ length: inp }, (_, i) => Math.floor(i / group));
  return [
    { name: `${prefix}.qweight`, dtype: 'I32', shape: [inp / pf, out], data: packInputs(lin, pf) },
    { name: `${prefix}.qzeros`, dtype: 'I32', shape: [nG, out / pf], data: packZeros(lin, pf, nG) },
    { name: `${prefix}.scales`, dtype: 'F16', shape: [nG, out], data: scalesT },
    { name: `${prefix}.g_idx`, dtype: 'I32', shape: [inp], data: gIdx },
  ];
}

function check(s: ExportSettings, source: string): void {
  if (s.bits !== 4 && s.bits !== 8)
    fail(`${source}: gptq export supports INT4 and INT8, the checkpoint is INT${s.bits}`);
  if (s.unquantized.length > 0)
    fail(
      `${source}: ${s.unquantized[0]} (and ${s.unquantized.length - 1} more) are not quantized; the GPTQ config has no per-module exclusion list, export to autoawq or compressed-tensors`,
    );
}

function gptqStep(s: ExportSettings) {
  const step = s.recipe.steps.find((x) => x.method === 'gptq');
  return step?.method === 'gptq' ? step : undefined;
}

export const GPTQ: LayoutWriter = {
  name: 'gptq',
  check,
  linearTensors,
  quantizationConfig: (s) => ({
    quant_method: 'gptq',
    checkpoint_format: 'gptq',
    bits: s.bits,
    group_size: s.group,
    desc_act: s.actOrder,
    sym: s.symmetric,
    static_groups: gptqStep(s)?.staticGroups ?? false,
    true_sequential: true,
    damp_percent: gptqStep(s)?.damp ?? 0.01,
    lm_head: false,
    model_name_or_path: null,
    model_file_base_name: 'model',
  }),
};

// ---------------------------------------------------------------------------------------------
// Reading

function unpackCodes(t: StoredTensors, bits: number, pf: number): Uint8Array {
  const { rows: out, cols: inp } = t;
  const mask = 2 ** bits - 1;
  const qweight = t.words('qweight', [inp / pf, out]);
  const codes = new Uint8Array(out * inp);
  for (let r = 0; r < inp / pf; r++)
    for (let o = 0; o < out; o++) {
      const word = qweight[r * out + o];
      for (let k = 0; k < pf; k++) codes[o * inp + r * pf + k] = (word >>> (bits * k)) & mask;
    }
  return codes;
}

function unpackZeros(t: StoredTensors, s: LinearSettings, pf: number, nG: number): Uint8Array {
  const { rows: out } = t;
  const { bits } = s;
  const mask = 2 ** bits - 1;
  const offset = s.zeroOffset ?? 1;
  const qzeros = t.words('qzeros', [nG, out / pf]);
  const zeros = new Uint8Array(out * nG);
  for (let g = 0; g < nG; g++)
    for (let j = 0; j < out / pf; j++) {
      const word = qzeros[g * (out / pf) + j];
      for (let k = 0; k < pf; k++) {
        const zero = ((word >>> (bits * k)) & mask) + offset;
        if (zero > 255)
          t.fail(
            'qzeros',
            `holds a zero point of ${zero} (stored ${mask}, plus 1 as GPTQ v1 loaders add), which llmq cannot hold`,
          );
        zeros[(j * pf + k) * nG + g] = zero;
      }
    }
  return zeros;
}

function checkImpliedZeros(t: StoredTensors, zeros: Uint8Array, bits: number): void {
  const implied = 2 ** (bits - 1);
  const at = zeros.findIndex((z) => z !== implied);
  if (at >= 0)
    t.fail(
      'qzeros',
      `holds zero point ${zeros[at]} where sym=true implies ${implied} (loaders disagree on such checkpoints: vLLM ignores qzeros, AutoGPTQ applies them)`,
    );
}

function groupIndex(t: StoredTensors, s: LinearSettings, nG: number): Int32Array | undefined {
  if (!t.has('g_idx')) {
    if (s.actOrder) t.fail('g_idx', 'is missing (desc_act is true)');
    return undefined;
  }
  return t.groupIndex('g_idx', nG);
}

function unpack(t: StoredTensors, s: LinearSettings): UnpackedLinear {
  const { prefix, rows: out, cols: inp } = t;
  const pf = 32 / s.bits;
  if (inp % pf !== 0 || out % pf !== 0)
    t.fail(
      'qweight',
      `cannot hold a [${out}, ${inp}] weight: INT${s.bits} packs ${pf} per int32, which must divide both dimensions`,
    );
  const group = s.group === -1 ? inp : s.group;
  if (inp % group !== 0)
    t.fail('scales', `cannot be read: group size ${group} does not divide ${inp} input features`);
  const nG = inp / group;
  const codes = unpackCodes(t, s.bits, pf);
  const zeros = unpackZeros(t, s, pf, nG);
  if (s.symmetric) checkImpliedZeros(t, zeros, s.bits);
  const scalesT = t.floats('scales', [nG, out]);
  const scales = new Float32Array(out * nG);
  for (let g = 0; g < nG; g++) for (let o = 0; o < out; o++) scales[o * nG + g] = scalesT[g * out + o];
  const gIdx = groupIndex(t, s, nG);
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

/** `key`: the dynamic pattern the settings come from; base settings name their own fields. */
function checkedSettings(c: ConfigFields, s: LinearSettings, key?: string): LinearSettings {
  const field = (name: string, value: number) => [key ?? name, key ? `${name} ${value}` : `${value}`];
  if (![2, 4, 8].includes(s.bits)) {
    const [at, what] = field('bits', s.bits);
    c.fail(at, `${what}: llmq reads GPTQ INT2, INT4 and INT8 (other widths straddle int32 words)`);
  }
  if (s.group !== -1 && s.group < 1) {
    const [at, what] = field('group_size', s.group);
    c.fail(at, `${what}: expected a positive group size or -1`);
  }
  return s;
}

function readFormat(c: ConfigFields): 'gptq' | 'gptq_v2' {
  if (c.bool('is_marlin_format', false))
    c.fail('is_marlin_format', 'is true: Marlin-repacked weights are not the GPTQ layout llmq reads');
  const format = (c.str(['checkpoint_format', 'format']) ?? 'gptq').toLowerCase();
  if (format !== 'gptq' && format !== 'gptq_v2')
    c.fail('checkpoint_format', `"${format}": llmq reads GPTQ checkpoint_format "gptq" (v1) and "gptq_v2"`);
  const pack = c.str('pack_dtype');
  if (pack !== undefined && pack.replace(/^torch\./, '') !== 'int32')
    c.fail('pack_dtype', `"${pack}": llmq reads GPTQ codes packed in int32`);
  return format;
}

interface DynamicRule {
  skip: boolean;
  re: RegExp;
  settings: LinearSettings;
}

/** GPTQModel `dynamic`: per-module overrides and "-:" exclusions, in order. */
function dynamicRules(c: ConfigFields, base: LinearSettings): DynamicRule[] {
  const dynamic = c.sub('dynamic');
  if (!dynamic) return [];
  return dynamic.keys().map((key) => {
    const skip = key.startsWith('-:');
    const re = dynamic.pattern(key, key.replace(/^[-+]:/, ''));
    const over = dynamic.sub(key);
    const settings = checkedSettings(
      dynamic,
      {
        ...base,
        bits: over?.int('bits', base.bits) ?? base.bits,
        group: over?.int('group_size', base.group) ?? base.group,
        symmetric: over?.bool('sym', base.symmetric) ?? base.symmetric,
        actOrder: over?.bool('desc_act', base.actOrder) ?? base.actOrder,
      },
      key,
    );
    return { skip, re, settings };
  });
}

/** transformers' modules_in_block_to_quantize: lists of names inside a block, matched as suffixes. */
function blockModules(c: ConfigFields): string[] | undefined {
  const v = c.value('modules_in_block_to_quantize');
  if (v === undefined || v === null) return undefined;
  const flat = Array.isArray(v) ? v.flat() : [v];
  if (!flat.every((m) => typeof m === 'string'))
    c.fail('modules_in_block_to_quantize', 'must be a list of lists of module names');
  return flat as string[];
}

function settings(c: ConfigFields): ImportSettings {
  const format = readFormat(c);
  const base = checkedSettings(c, {
    bits: c.int('bits'),
    group: c.int('group_size', 128),
    symmetric: c.bool('sym', true),
    actOrder: c.bool('desc_act', false),
    zeroOffset: format === 'gptq' ? 1 : 0,
  });
  const rules = dynamicRules(c, base);
  const inBlock = blockModules(c);
  const g = base.group === -1 ? 'per channel' : `g${base.group}`;
  return {
    layout: 'gptq',
    describe: `gptq ${format === 'gptq' ? 'v1' : 'v2'} int${base.bits} ${g}${base.symmetric ? ' sym' : ''}${base.actOrder ? ' desc_act' : ''}${rules.length ? ' dynamic' : ''}`,
    linear(module) {
      const rule = rules.find((r) => r.re.test(module));
      if (rule?.skip) return undefined;
      if (inBlock && !inBlock.some((m) => module.endsWith(m))) return undefined;
      return rule ? rule.settings : base;
    },
  };
}

export const GPTQ_READER: LayoutReader = {
  name: 'gptq',
  packedSuffix: 'qweight',
  settings,
  unpack,
};
