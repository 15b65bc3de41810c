import { fail } from '../errors.ts';
import { EXPORT_LAYOUTS, exportCheckpoint, isExportLayout } from '../io/export/index.ts';
import { onePositional, parse, printJson } from './args.ts';

export const EXPORT_HELP = `llmq export <llmq-quantized-dir> --to ${EXPORT_LAYOUTS.join('|')} --out <dir> [--force] [--json]
  Rewrites an llmq INT weight-only checkpoint in a layout vLLM / transformers load: AutoAWQ GEMM
  (INT4), GPTQ v1 (INT4/INT8, g_idx for act_order) or compressed-tensors pack-quantized (INT4/INT8).
  Codes and zero points are kept; scales and all other tensors become fp16 (the summary reports the
  largest relative change this makes to a weight). Refuses what a layout cannot hold (MX/FP8/NVFP4,
  activation quantization, salient columns) and an existing --out unless --force.`;

export async function exportCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('export', argv, {
    to: { type: 'string' },
    out: { type: 'string' },
    force: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  });
  const dir = onePositional('export', positionals, 'llmq quantized checkpoint directory');
  if (!values.to) fail(`export: --to ${EXPORT_LAYOUTS.join('|')} is required`);
  if (!isExportLayout(values.to))
    fail(`export: --to "${values.to}" is not a layout (layouts: ${EXPORT_LAYOUTS.join(', ')})`);
  if (!values.out) fail('export: --out <dir> is required');
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
