/** Flags shared by generate, chat and serve: the model, its context, and how tokens are chosen. */
import path from 'node:path';
import { fail } from '../errors.ts';
import { isGgufPath } from '../io/gguf-model.ts';
import { ggufChatTemplate, loadChatTemplate } from '../runtime/chat-template-file.ts';
import type { SamplingOptions } from '../runtime/engine.ts';
import { eosIdsOf } from '../runtime/eos.ts';
import { ModelEngine } from '../runtime/generate.ts';
import { optionalIntFlag } from './args.ts';
import { MODEL_FLAGS, openBackendAndTokenizer, openModel, tokenizerSource } from './open-model.ts';

export const ENGINE_FLAGS = {
  ...MODEL_FLAGS,
  context: { type: 'string' },
} as const;

export const SAMPLING_FLAGS = {
  'max-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'min-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  stop: { type: 'string', multiple: true },
} as const;

export const ENGINE_HELP = `[--device cpu|webgpu|auto] [--context N] [--recipe R] [--int8 auto|off] [--packed auto|off] [--tokenizer <hf-model-dir>]`;
export const SAMPLING_HELP = `[--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S] [--stop S]...`;

type Values = Record<string, string | boolean | string[] | undefined>;

/** Loads the model behind an engine (any model eval takes; --recipe quantizes on the fly). */
export async function openEngine(
  command: string,
  dir: string,
  values: Values,
  quiet: boolean,
): Promise<ModelEngine> {
  const flat = values as Record<string, string | boolean | undefined>;
  const opened = await openBackendAndTokenizer(command, dir, flat);
  const { model, tokenizer } = await openModel(dir, flat, opened, quiet);
  const source = tokenizerSource(dir, flat);
  const template = isGgufPath(source) ? ggufChatTemplate(source) : loadChatTemplate(source);
  const contextLength = optionalIntFlag('context', values.context, 2);
  if (contextLength !== undefined && contextLength > model.config.maxPositionEmbeddings)
    fail(
      `--context ${contextLength} exceeds the model's max_position_embeddings ${model.config.maxPositionEmbeddings}`,
    );
  return new ModelEngine(model, tokenizer, {
    modelName: path.basename(path.resolve(dir)),
    contextLength,
    template,
    eosIds: eosIdsOf(model),
  });
}

function numberFlag(name: string, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (typeof value !== 'string' || value.trim() === '' || !Number.isFinite(n))
    fail(`--${name} must be a number, got "${String(value)}"`);
  return n;
}

/** Sampling options from flags (the Sampler validates their ranges). */
export function samplingFlags(values: Values): SamplingOptions & { maxTokens: number; stop: string[] } {
  return {
    maxTokens: optionalIntFlag('max-tokens', values['max-tokens']) ?? 128,
    temperature: numberFlag('temperature', values.temperature),
    topK: optionalIntFlag('top-k', values['top-k'], 0),
    topP: numberFlag('top-p', values['top-p']),
    minP: numberFlag('min-p', values['min-p']),
    repetitionPenalty: numberFlag('repetition-penalty', values['repetition-penalty']),
    seed: optionalIntFlag('seed', values.seed, 0),
    stop: (values.stop as string[] | undefined) ?? [],
  };
}
