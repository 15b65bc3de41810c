/**
 * What the chat loop and the HTTP server need from a loaded model: tokenize, render a chat, and
 * generate with streaming deltas. `generate.ts` implements it over a LlamaModel + KV cache; tests of
 * the server may implement it with a fake.
 */

/** Token choice after the logits (all optional; none set = greedy). */
export interface SamplingOptions {
  /** 0 = greedy (argmax); default 1 when any other sampling option is set, else 0 */
  temperature?: number;
  /** keep the k most likely tokens (0 or absent = all) */
  topK?: number;
  /** keep the smallest set of most likely tokens whose probability reaches p (1 or absent = all) */
  topP?: number;
  /** drop tokens whose probability is below minP x the top token's (0 or absent = none) */
  minP?: number;
  /** CTRL-style: logits of tokens already in the prompt or output are divided (if > 0) or multiplied by it */
  repetitionPenalty?: number;
  /** seed of the sampler's random numbers (same seed, same tokens) */
  seed?: number;
}

export interface GenerateOptions extends SamplingOptions {
  /** most new tokens (the context length also bounds it) */
  maxTokens: number;
  /** generation ends before the first occurrence of any of these strings (not included in the text) */
  stop?: readonly string[];
  /** aborting ends generation at the next token with finishReason 'abort' */
  signal?: AbortSignal;
}

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GenerateResult {
  text: string;
  /** ids of the generated tokens (the stop string's tokens included when one ended it) */
  tokens: number[];
  promptTokens: number;
  finishReason: FinishReason;
  /** wall seconds of the prompt's forward pass and of the token-by-token part */
  prefillSeconds: number;
  decodeSeconds: number;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface Engine {
  /** the name clients address (the model directory's base name) */
  readonly modelName: string;
  /** the most tokens prompt + output may hold */
  readonly contextLength: number;
  /** ids of a plain-text prompt, with the tokenizer's special tokens (BOS) as HF adds them */
  encode(text: string): Int32Array;
  /** ids of a conversation rendered by the model's chat template, ready for the assistant's turn */
  encodeChat(messages: readonly ChatMessage[]): Int32Array;
  /**
   * Generates after `prompt`; `onText` receives each new piece of text as soon as it is final
   * (never half a UTF-8 character, never text of a stop string). One call at a time.
   */
  generate(
    prompt: Int32Array,
    opts: GenerateOptions,
    onText?: (delta: string) => void,
  ): Promise<GenerateResult>;
}
