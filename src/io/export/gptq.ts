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
 */
import { fail } from '../../errors.ts';
import type { TensorToWrite } from '../safetensors.ts';
import type { ExportSettings, IntLinear, LayoutWriter } from './index.ts';

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
