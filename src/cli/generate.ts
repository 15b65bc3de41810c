import fs from 'node:fs';
import { fail } from '../errors.ts';
import { onePositional, parse, printJson } from './args.ts';
import {
  ENGINE_FLAGS,
  ENGINE_HELP,
  openEngine,
  SAMPLING_FLAGS,
  SAMPLING_HELP,
  samplingFlags,
} from './open-engine.ts';

export const GENERATE_HELP = `llmq generate <model-dir | model.gguf> (--prompt TEXT | --prompt-file F) [--chat] ${SAMPLING_HELP} ${ENGINE_HELP} [--json]
  Continues a prompt (with --chat: answers it as a user message, through the model's chat template),
  streaming the text as it is generated. Greedy unless a sampling flag is given (--temperature 0 is
  greedy too); the same --seed gives the same text. Ends at an EOS token, a --stop string, --max-tokens
  (default 128) or the context (--context, default max_position_embeddings). Quantized checkpoints run
  as stored (INT8 and packed INT weights stay integer on WebGPU). --json prints one object instead.`;

export async function generateCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('generate', argv, {
    prompt: { type: 'string' },
    'prompt-file': { type: 'string' },
    chat: { type: 'boolean', default: false },
    ...SAMPLING_FLAGS,
    ...ENGINE_FLAGS,
    json: { type: 'boolean', default: false },
  });
  const dir = onePositional('generate', positionals, 'model directory or .gguf file');
  const prompt = promptText(values.prompt, values['prompt-file']);
  const sampling = samplingFlags(values);
  const engine = await openEngine('generate', dir, values, values.json);
  const ids = values.chat ? engine.encodeChat([{ role: 'user', content: prompt }]) : engine.encode(prompt);
  const stream = !values.json;
  const result = await engine.generate(ids, sampling, stream ? (d) => process.stdout.write(d) : undefined);
  const decodeRate = (result.tokens.length - 1) / Math.max(result.decodeSeconds, 1e-9);
  const prefillRate = result.promptTokens / Math.max(result.prefillSeconds, 1e-9);
  if (values.json)
    return printJson({
      model: dir,
      device: engine.model.backend.name,
      text: result.text,
      tokens: result.tokens,
      prompt_tokens: result.promptTokens,
      finish_reason: result.finishReason,
      prefill_seconds: result.prefillSeconds,
      decode_seconds: result.decodeSeconds,
      prefill_tokens_per_s: prefillRate,
      decode_tokens_per_s: result.tokens.length > 1 ? decodeRate : null,
    });
  process.stdout.write('\n');
  process.stderr.write(
    `[${result.tokens.length} tokens, ${result.finishReason}; prompt ${result.promptTokens} tokens at ${prefillRate.toFixed(1)} tokens/s, ` +
      `then ${decodeRate.toFixed(1)} tokens/s on ${engine.model.backend.name}]\n`,
  );
}

function promptText(prompt: string | undefined, file: string | undefined): string {
  if ((prompt === undefined) === (file === undefined))
    fail('generate: give exactly one of --prompt or --prompt-file');
  if (prompt !== undefined) return prompt;
  if (!fs.existsSync(file!)) fail(`--prompt-file ${file}: no such file`);
  return fs.readFileSync(file!, 'utf8');
}
