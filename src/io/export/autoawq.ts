/**
 * AutoAWQ GEMM layout (what AutoAWQ's WQLinear_GEMM, transformers' AWQ integration and vLLM's awq /
 * awq_marlin load). Details read from AutoAWQ awq/modules/linear/gemm.py (WQLinear_GEMM.from_linear)
 * and awq/utils/packing_utils.py (unpack_awq, reverse_awq_order, dequantize_gemm),
 * awq/models/_config.py (AwqConfig.to_transformers_dict), and vLLM
 * model_executor/layers/quantization/awq.py and awq_marlin.py (config keys, shapes).
 *
 * Per linear (weight [out, in], g = group, -1 meaning g = in):
 *   qweight [in, out/8]   int32: word j of input row i holds the 4-bit codes of output columns
 *                         8j + ORDER[k] at bits 4k..4k+3, ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
 *   qzeros  [in/g, out/8] int32: zero points packed the same way, stored as they are (no offset)
 *   scales  [in/g, out]   fp16
 *   w[o, i] = (q - z) * s with the group g = i / group of input i.
 * quantization_config carries both the AutoAWQ names (w_bit, q_group_size) and the transformers /
 * vLLM awq_marlin ones (bits, group_size): awq_marlin, which vLLM prefers on CUDA, reads only the
 * latter. Symmetric INT4 is written with its implied zero point 8, which this layout holds exactly.
 *
 * Reading (AUTOAWQ_READER): AutoAWQ writes w_bit / q_group_size, transformers' AwqConfig bits /
 * group_size (default 128); either is accepted, both must agree when both are there. Only version
 * "gemm" (the default) with backend "autoawq" is this layout: gemv / gemv_fast / marlin / exllama /
 * ipex and llm-awq checkpoints pack differently and are refused. modules_to_not_convert entries
 * match a module whose name contains them (as transformers and vLLM match them). The zero points
 * are read as stored whatever zero_point says, since the GEMM kernels always apply qzeros.
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

/** Output column offset (within a word's 8) of the nibble at bits 4k. */
const ORDER = [0, 2, 4, 6, 1, 3, 5, 7];

/** [n, out] values, value(r, o) = get(r, o), as [n, out/8] words in the AWQ nibble order. */
function packInterleaved(n: number, out: number, get: (r: number, o: number) => number): Int32Array {
  const words = out / 8;
  const packed = new Int32Array(n * words);
  for (let r = 0; r < n; r++)
    for (let j = 0; j < words; j++) {
      let word = 0;
      for (let k = 0; k < 8; k++) word |= get(r, 8 * j + ORDER[k]) << (4 * k);
      packed[r * words + j] = word;
    }
  return packed;
}

function linearTensors(lin: IntLinear): TensorToWrite[] {
  const { prefix, rows: out, cols: inp, group, codes, scales, zeros } = lin;
  if (out % 8 !== 0)
    fail(
      `autoawq: ${prefix} has ${out} output features; AutoAWQ packs 8 per int32 along the output dimension`,
    );
  if (lin.gIdx)
    fail(`autoawq: ${prefix} stores g_idx (GPTQ act_order), which the AWQ GEMM layout has no place for`);
  const nG = inp / group;
  const qweight = packInterleaved(inp, out, (i, o) => codes[o * inp + i]);
  const qzeros = packInterleaved(nG, out, (g, o) => zeros[o * nG + g]);
  const scalesT = new Uint16Array(nG * out);
  for (let o = 0; o < out; o++) for (let g = 0; g < nG; g++) scalesT[g * out + o] = scales[o * nG + g];
  return [
    { name: `${prefix}.qweight`, dtype: 'I32', shape: [inp, out / 8], data: qweight },
    { name: `${prefix}.qzeros`, dtype: 'I32', shape: [nG, out / 8], data: qzeros },
    { name: `${prefix}.scales`, dtype: 'F16', shape: [nG, out], data: scalesT },
  ];
}

function check(s: ExportSettings, source: string): void {
  if (s.bits !== 4) fail(`${source}: autoawq holds INT4 weights only, the checkpoint is INT${s.bits}`);
  if (s.actOrder)
    fail(
      `${source}: the checkpoint stores g_idx (GPTQ act_order), which autoawq cannot hold; export to gptq or compressed-tensors`,
    );
}

/** Linear names (self_attn.o_proj) that stay in full precision; loaders match them as substrings. */
function notConverted(s: ExportSettings): string[] | null {
  const names = new Set(s.unquantized.map((m) => m.replace(/^model\.layers\.\d+\./, '')));
  return names.size > 0 ? [...names] : null;
}

export const AUTOAWQ: LayoutWriter = {
  name: 'autoawq',
  check,
  linearTensors,
  quantizationConfig: (s) => ({
    quant_method: 'awq',
    version: 'gemm',
    bits: 4,
    group_size: s.group,
    w_bit: 4,
    q_group_size: s.group,
    zero_point: true,
    modules_to_not_convert: notConverted(s),
  }),
};

// ---------------------------------------------------------------------------------------------
// Reading

/** Inverse of packInterleaved: calls put(r, o, value) for every value of the [n, out/8] words. */
function unpackInterleaved(
  words: Int32Array,
  n: number,
  out: number,
  put: (r: number, o: number, value: number) => void,
): void {
  const perRow = out / 8;
  for (let r = 0; r < n; r++)
    for (let j = 0; j < perRow; j++) {
      const word = words[r * perRow + j];
      for (let k = 0; k < 8; k++) put(r, 8 * j + ORDER[k], (word >>> (4 * k)) & 15);
    }
}

function unpack(t: StoredTensors, s: LinearSettings): UnpackedLinear {
  const { prefix, rows: out, cols: inp } = t;
  if (out % 8 !== 0)
    t.fail('qweight', `cannot hold ${out} output features, not a multiple of 8 (AWQ GEMM packs 8 per int32)`);
  const group = s.group === -1 ? inp : s.group;
  if (inp % group !== 0)
    t.fail('scales', `cannot be read: group size ${group} does not divide ${inp} input features`);
  const nG = inp / group;
  const codes = new Uint8Array(out * inp);
  unpackInterleaved(t.words('qweight', [inp, out / 8]), inp, out, (i, o, q) => {
    codes[o * inp + i] = q;
  });
  const zeros = new Uint8Array(out * nG);
  const stored = t.has('qzeros');
  if (stored)
    unpackInterleaved(t.words('qzeros', [nG, out / 8]), nG, out, (g, o, z) => {
      zeros[o * nG + g] = z;
    });
  else if (!s.symmetric) t.fail('qzeros', 'is missing (zero_point is true)');
  else zeros.fill(8);
  const scalesT = t.floats('scales', [nG, out]);
  const scales = new Float32Array(out * nG);
  for (let g = 0; g < nG; g++) for (let o = 0; o < out; o++) scales[o * nG + g] = scalesT[g * out + o];
  return { prefix, rows: out, cols: inp, bits: 4, symmetric: !stored, group, codes, scales, zeros };
}

function settings(c: ConfigFields): ImportSettings {
  const version = (c.str('version') ?? 'gemm').toLowerCase();
  if (version !== 'gemm')
    c.fail(
      'version',
      `"${version}": llmq reads the AutoAWQ GEMM layout only (gemv, gemv_fast, marlin, exllama and ipex checkpoints pack differently)`,
    );
  const backend = c.str('backend');
  if (backend !== undefined && backend !== 'autoawq')
    c.fail(
      'backend',
      `"${backend}": llmq reads AutoAWQ checkpoints (backend autoawq); llm-awq packs differently`,
    );
  const bits = c.int(['bits', 'w_bit']);
  if (bits !== 4) c.fail('bits', `${bits}: the AWQ GEMM layout holds 4-bit weights only`);
  const group = c.int(['group_size', 'q_group_size'], 128);
  if (group !== -1 && group < 1) c.fail('group_size', `${group}: expected a positive group size or -1`);
  const symmetric = !c.bool('zero_point', true);
  const skip = c.strings('modules_to_not_convert') ?? [];
  const linear: LinearSettings = { bits, group, symmetric, actOrder: false };
  return {
    layout: 'autoawq',
    describe: `awq gemm int4 ${group === -1 ? 'per channel' : `g${group}`}${skip.length ? `, not converted: ${skip.join(', ')}` : ''}`,
    linear: (module) => (skip.some((m) => module.includes(m)) ? undefined : linear),
  };
}

export const AUTOAWQ_READER: LayoutReader = {
  name: 'autoawq',
  packedSuffix: 'qweight',
  settings,
  unpack,
};
