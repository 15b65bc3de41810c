/** tokenizer.json (HF fast tokenizer) through @huggingface/tokenizers, which reproduces HF's ids. */
import { Tokenizer } from '@huggingface/tokenizers';
import { fail } from '../errors.ts';

export interface TextTokenizer {
  encode(text: string): Int32Array;
  decode(ids: ArrayLike<number>): string;
  vocabSize: number;
  summary: string;
}

/** A tokenizer from the parsed tokenizer.json and tokenizer_config.json; `file` names it in errors. */
export function tokenizerFromJson(
  json: Record<string, unknown>,
  cfg: Record<string, unknown>,
  file: string,
): TextTokenizer {
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json as never, cfg as never);
  } catch (e) {
    return fail(`${file}: cannot build the tokenizer (${(e as Error).message})`);
  }
  const model = (json.model ?? {}) as { type?: string; vocab?: Record<string, number> | unknown[] };
  const { size: vocabSize, added, addedInModel } = countTokens(model.vocab, json.added_tokens);
  const overlap = addedInModel > 0 ? `, ${addedInModel} of them in the ${model.type ?? 'model'} vocab` : '';
  return {
    encode: (text) => Int32Array.from(tok.encode(text).ids),
    decode: (ids) => tok.decode(Array.from(ids)),
    vocabSize,
    summary: `${model.type ?? 'unknown'} tokenizer, ${vocabSize} tokens (${added} added${overlap}), bos ${String(cfg.bos_token ?? 'none')}, eos ${String(cfg.eos_token ?? 'none')}`,
  };
}

/**
 * Distinct token ids: the model vocab (an object token -> id, or Unigram's array of [piece, score]
 * where the index is the id) united with the added tokens, which often reuse ids of the vocab.
 */
function countTokens(
  vocab: Record<string, number> | unknown[] | undefined,
  addedTokens: unknown,
): { size: number; added: number; addedInModel: number } {
  const ids = new Set<number>(Array.isArray(vocab) ? vocab.keys() : Object.values(vocab ?? {}));
  const added = Array.isArray(addedTokens) ? (addedTokens as { id?: unknown }[]) : [];
  let addedInModel = 0;
  for (const t of added) {
    if (typeof t?.id !== 'number') continue;
    if (ids.has(t.id)) addedInModel++;
    else ids.add(t.id);
  }
  return { size: ids.size, added: added.length, addedInModel };
}
