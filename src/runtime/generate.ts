/**
 * Text generation over a loaded model: prompt through the KV cache, then one token at a time, each
 * chosen on the host from the last position's logits. The cache outlives a call, so a chat turn or a
 * request that repeats an earlier conversation only runs its new tokens.
 */
import { fail } from '../errors.ts';
import type { ModelConfig } from '../io/config.ts';
import type { TextTokenizer } from '../io/tokenizer.ts';
import type { LlamaModel } from '../model/llama.ts';
import type { ChatTemplate } from './chat-template.ts';
import { startsWithBos } from './chat-template.ts';
import type { ChatMessage, Engine, GenerateOptions, GenerateResult } from './engine.ts';
import { KvCache } from './kv-cache.ts';
import { Sampler } from './sampling.ts';
import { TextStream } from './text-stream.ts';

export interface EngineOptions {
  modelName: string;
  /** most tokens of prompt + output (default: the model's max_position_embeddings) */
  contextLength?: number;
  template: ChatTemplate;
  /** ids that end generation (default: eos_token_id of config.json; Node callers add generation_config.json's via eosIdsOf) */
  eosIds?: readonly number[];
}

/** warmUp's first prompt: more rows than the matrix-vector kernels take, so the GEMMs compile */
const WARM_PROMPT = 8;

export class ModelEngine implements Engine {
  readonly modelName: string;
  readonly contextLength: number;
  private readonly cache: KvCache;
  /** the tokens whose keys/values the cache holds */
  private cachedIds: number[] = [];
  private readonly eos: Set<number>;

  constructor(
    readonly model: LlamaModel,
    private readonly tokenizer: TextTokenizer,
    private readonly opts: EngineOptions,
  ) {
    this.modelName = opts.modelName;
    this.contextLength = opts.contextLength ?? model.config.maxPositionEmbeddings;
    this.cache = new KvCache(model, this.contextLength);
    this.eos = new Set(opts.eosIds ?? eosIdsFrom(model.config));
  }

  encode(text: string): Int32Array {
    return this.tokenizer.encode(text);
  }

  encodeChat(messages: readonly ChatMessage[]): Int32Array {
    const text = this.opts.template.render(messages);
    const ids = this.tokenizer.encode(text);
    // HF encodes a rendered chat without special tokens: a template that writes BOS gets only that one
    const bos = this.model.config.bosTokenId;
    const doubled = ids.length > 1 && ids[0] === bos && ids[1] === bos;
    return doubled && startsWithBos(text, this.opts.template.bosToken) ? ids.subarray(1) : ids;
  }

  async generate(
    prompt: Int32Array,
    opts: GenerateOptions,
    onText?: (delta: string) => void,
  ): Promise<GenerateResult> {
    if (prompt.length === 0) fail('generate: the prompt is empty (no tokens)');
    if (prompt.length >= this.contextLength)
      fail(`generate: the prompt has ${prompt.length} tokens, the context holds ${this.contextLength}`);
    const room = this.contextLength - prompt.length;
    const maxTokens = Math.min(opts.maxTokens, room);
    const sampler = new Sampler(opts, this.model.config.vocabSize);
    const stream = new TextStream(this.tokenizer, opts.stop ?? [], prompt);
    const t0 = performance.now();
    let logits = await this.prefill(prompt);
    const t1 = performance.now();
    const history = Array.from(prompt);
    const tokens: number[] = [];
    let finishReason: GenerateResult['finishReason'] = 'length';
    while (tokens.length < maxTokens) {
      if (opts.signal?.aborted) {
        finishReason = 'abort';
        break;
      }
      const id = sampler.next(logits, history);
      tokens.push(id);
      history.push(id);
      if (this.eos.has(id)) {
        finishReason = 'stop';
        break;
      }
      const delta = stream.push(id);
      if (delta) onText?.(delta);
      if (stream.stopped) {
        finishReason = 'stop';
        break;
      }
      if (tokens.length < maxTokens) logits = await this.step(id);
    }
    const rest = stream.stopped ? '' : stream.finish();
    if (rest) onText?.(rest);
    return {
      text: stream.text,
      tokens,
      promptTokens: prompt.length,
      finishReason,
      prefillSeconds: (t1 - t0) / 1000,
      decodeSeconds: (performance.now() - t1) / 1000,
    };
  }

  dispose(): void {
    this.cache.dispose();
    this.cachedIds = [];
  }

  /**
   * Compiles, where the backend compiles kernels on first use (WebGPU), what a request will run: a
   * prompt, a decode step with the keys in one chunk and one with them split (attention's kernels
   * differ), then forgets those tokens (and anything cached before). Prompts of 2-4 tokens (a
   * matrix-vector kernel per row count) still compile on first use.
   */
  async warmUp(): Promise<void> {
    const keys = this.model.backend.warmUpKeys;
    if (keys === undefined || this.contextLength < 4) return;
    const id = this.model.config.bosTokenId ?? 0;
    const first = Math.min(WARM_PROMPT, this.contextLength - 3);
    this.forget();
    await this.run(new Int32Array(first).fill(id));
    await this.step(id);
    const rest = Math.min(keys, this.contextLength - 1) - this.cachedIds.length;
    if (rest > WARM_PROMPT) {
      await this.run(new Int32Array(rest).fill(id));
      await this.step(id);
    }
    this.forget();
  }

  /** Empties the cache (its buffers stay for the next request). */
  private forget(): void {
    this.cache.truncate(0);
    this.cachedIds = [];
  }

  /** Runs the prompt after the longest prefix the cache already holds (at least its last token). */
  private async prefill(prompt: Int32Array): Promise<Float32Array> {
    let shared = 0;
    const limit = Math.min(this.cachedIds.length, prompt.length - 1);
    while (shared < limit && this.cachedIds[shared] === prompt[shared]) shared++;
    this.cache.truncate(shared);
    this.cachedIds.length = shared;
    return this.run(prompt.subarray(shared));
  }

  private step(id: number): Promise<Float32Array> {
    return this.run(Int32Array.of(id));
  }

  private async run(ids: Int32Array): Promise<Float32Array> {
    this.cache.reserve(ids.length);
    const logits = this.model.forwardCached(ids, this.cache);
    for (const id of ids) this.cachedIds.push(id);
    const host = await this.model.backend.read(logits);
    logits.dispose();
    return host;
  }
}

/** eos_token_id of config.json, plus generation_config.json's when given (instruct models often add one). */
export function eosIdsFrom(config: ModelConfig, generationConfig?: Record<string, unknown>): number[] {
  return [...new Set([...asIds(config.eosTokenId), ...asIds(generationConfig?.eos_token_id)])];
}

function asIds(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  return Array.isArray(v) ? v.filter((x): x is number => typeof x === 'number') : [];
}
