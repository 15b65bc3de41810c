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
 */
import { fail } from '../../errors.ts';
import type { TensorToWrite } from '../safetensors.ts';
import type { ExportSettings, IntLinear, LayoutWriter } from './index.ts';

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
