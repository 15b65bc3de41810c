import { fail } from '../errors.ts';
import {
  exportGguf,
  GGUF_EXPORT_TYPES,
  type GgufExportSummary,
  type GgufExportType,
} from '../io/export/gguf.ts';
import { EXPORT_LAYOUTS, exportCheckpoint, isExportLayout } from '../io/export/index.ts';
import { isGgufPath } from '../io/gguf-model.ts';
import { onePositional, parse, printJson } from './args.ts';
import { Progress } from './progress.ts';

const GGUF_TARGETS = GGUF_EXPORT_TYPES.map((t) => `gguf-${t}`);
const TARGETS = [...EXPORT_LAYOUTS, ...GGUF_TARGETS];

export const EXPORT_HELP = `llmq export <model-dir> --to ${TARGETS.join('|')} --out <dir|file.gguf> [--q4-fma] [--force] [--json]
  autoawq, gptq, compressed-tensors: rewrites an llmq INT weight-only checkpoint in a layout vLLM /
  transformers load: AutoAWQ GEMM (INT4), GPTQ v1 (INT4/INT8, g_idx for act_order) or compressed-tensors
  pack-quantized (INT4/INT8). Codes and zero points are kept; scales and all other tensors become fp16
  (the summary reports the largest relative change this makes to a weight). Refuses what a layout cannot
  hold (MX/FP8/NVFP4, activation quantization, salient columns).
  gguf-q8_0, gguf-q4_0, gguf-q4_1, gguf-q5_0, gguf-q5_1, gguf-q2_k, gguf-q2_k_s, gguf-q3_k_s, gguf-q3_k_m,
  gguf-q3_k_l, gguf-q4_k_s, gguf-q4_k_m, gguf-q5_k_s, gguf-q5_k_m, gguf-q6_k, gguf-iq4_nl, gguf-iq4_xs,
  gguf-iq3_xs, gguf-iq3_s, gguf-iq3_m, gguf-f16: one GGUF file for llama.cpp / node-llama-cpp from a
  full-precision model or an llmq weight-only checkpoint (its dequantized weights, e.g. with AWQ's
  scaling, are quantized with llama.cpp's own Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q2_K / Q3_K / Q4_K /
  Q5_K / Q6_K / IQ4_NL / IQ4_XS / IQ3_XXS / IQ3_S rules, byte for byte; a checkpoint already in the tensor's llama.cpp type
  is written as it is; norms stay F32). A checkpoint quantized with an importance matrix (recipe step
  imatrix) is treated as llama-quantize --imatrix treats its file: the tensors it re-quantizes are
  weighted by the matrix (its imatrix.gguf), and the types below that depend on having one follow it
  (a linear already in the type llama-quantize gives it with or without one keeps its own blocks).
  Each tensor takes the type llama-quantize gives it:
  the output matrix Q6_K under every type but q8_0; the _m mixes Q6_K for attn_v and ffn_down in a
  third of the layers; q4_k_s Q5_K for attn_v in layers 0-3 and ffn_down in the first eighth; q2_k Q3_K
  for attn_output and ffn_down (attn_v Q3_K, or Q4_K with 4+ query heads per KV head); q3_k_m Q4_K for
  attn_output, Q5_K / Q4_K for attn_v and ffn_down; q3_k_l Q5_K for those three; K-types fall back
  (Q2_K and Q3_K to Q4_0, Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, IQ4_XS and IQ3 to IQ4_NL) where rows are
  not a multiple of 256. iq4_nl / iq4_xs: Q5_K for attn_v with 4+ query heads per KV head, and without
  an importance matrix for ffn_down in the first eighth. q4_0 / q5_0 with an importance matrix: Q4_1 /
  Q5_1 for ffn_down in the first eighth. iq3_s: IQ3_S (Q4_K for attn_v with 4+ query heads per KV head);
  iq3_m: IQ3_S with Q4_K for attn_v, attn_output and ffn_down in the first eighth; iq3_xs: IQ3_S with
  IQ3_XXS for attn_q, attn_k and the middle layers' ffn_gate / ffn_up (attn_v as iq3_s).
  q2_k_s (Q2_K, Q4_K for attn_v with 4+ query heads per KV head and ffn_down in the first eighth) needs
  an importance matrix, as llama-quantize does: it exports a checkpoint of a q2_k_s recipe with the
  imatrix step (e.g. imatrix-q2_k_s), not a full-precision model. iq3_xs likewise (llama-quantize writes
  IQ3_XXS tensors only with an importance matrix): a checkpoint quantized with the imatrix step.
  --q4-fma rounds Q4_0 (and Q5_0) as llama.cpp builds with a fused multiply-add do (aarch64).
  Refuses an existing --out unless --force.`;

export async function exportCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('export', argv, {
    to: { type: 'string' },
    out: { type: 'string' },
    'q4-fma': { type: 'boolean', default: false },
    force: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  });
  const dir = onePositional('export', positionals, 'model directory');
  if (!values.to) fail(`export: --to ${TARGETS.join('|')} is required`);
  if (!values.out) fail('export: --out is required');
  if (isGgufPath(dir))
    fail(`export: ${dir} is a GGUF file; export reads a Hugging Face model directory or an llmq checkpoint`);
  if (GGUF_TARGETS.includes(values.to)) {
    const type = values.to.slice('gguf-'.length) as GgufExportType;
    const progress = new Progress('export', 'tensors', values.json);
    const summary = await exportGguf(dir, values.out, {
      type,
      force: values.force,
      q4Fma: values['q4-fma'],
      onProgress: (done, total) => progress.update(done, total),
    });
    if (values.json) return printJson(summary);
    const types = Object.entries(summary.tensorTypes).map(([t, n]) => `${n} ${t}`);
    console.log(
      `${summary.out}: GGUF ${type} from ${summary.source}, ${summary.tensors} tensors (${types.join(', ')}), ` +
        `${(summary.bytes / 2 ** 20).toFixed(1)} MiB`,
    );
    if (summary.fallbacks.length) console.log(`  ${fallbackLine(summary.fallbacks)}`);
    return;
  }
  if (!isExportLayout(values.to))
    fail(`export: --to "${values.to}" is not a target (targets: ${TARGETS.join(', ')})`);
  if (values['q4-fma']) fail('export: --q4-fma applies to --to gguf-q4_0 only');
  const summary = exportCheckpoint(dir, values.to, values.out, { force: values.force });
  if (values.json) return printJson(summary);
  const group = summary.group_size === -1 ? 'per channel' : `group ${summary.group_size}`;
  console.log(
    `${summary.out}: ${summary.layout}, INT${summary.bits} ${summary.symmetric ? 'symmetric' : 'asymmetric'} ${group}` +
      `${summary.act_order ? ', act_order g_idx' : ''}; ${summary.quantized_linears} quantized linears, ` +
      `${summary.fp16_tensors} fp16 tensors, ${(summary.out_bytes / 2 ** 20).toFixed(1)} MiB in ${summary.seconds.toFixed(1)} s`,
  );
  console.log(
    `  scales rounded to fp16: ${summary.scales_changed} of ${summary.scales} changed, ` +
      `largest relative change of a weight ${summary.scale_max_rel_change.toExponential(2)}`,
  );
  if (summary.unquantized_linears.length > 0)
    console.log(`  left in fp16: ${summary.unquantized_linears.length} linears not targeted by the recipe`);
}

/** The fallbacks as counts per type, with the first tensor of each; --json lists them all. */
function fallbackLine(fallbacks: GgufExportSummary['fallbacks']): string {
  const byType = new Map<string, string[]>();
  for (const { tensor, type } of fallbacks) byType.set(type, [...(byType.get(type) ?? []), tensor]);
  const parts = [...byType].map(
    ([type, names]) => `${names.length} in ${type} (${names[0]}${names.length > 1 ? ', ...' : ''})`,
  );
  return `rows that do not fit the type's blocks: ${parts.join('; ')}`;
}
