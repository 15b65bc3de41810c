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
 */
import { fail } from '../../errors.ts';
import type { TensorToWrite } from '../safetensors.ts';
import type { ExportSettings, IntLinear, LayoutWriter } from './index.ts';

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
