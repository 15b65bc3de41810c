/**
 * Generated token ids -> final text, piece by piece: never half a UTF-8 character, never text of a
 * stop string.
 *
 * Decoding keeps two offsets into the ids, as HF text-generation-inference does: the text of the ids
 * before `read` is out; the new text is decode(ids[prefix..]) minus decode(ids[prefix..read]). The ids
 * between prefix and read give the decoder its context, which matters where the decode of a suffix is
 * not the suffix of the decode (SentencePiece's Metaspace decoder drops the leading space of whatever
 * it decodes). Both offsets move up whenever text comes out, so a token costs a decode of a few ids.
 *
 * Generation ends at the first token whose text holds a stop string; the text ends before the
 * earliest-starting stop string in it. (So stops 'ory #' and 'story ##' over "story ##" cut after "st"
 * when the '#' comes alone: 'ory #' was complete first.)
 */
import { fail } from '../errors.ts';
import type { TextTokenizer } from '../io/tokenizer.ts';

/** prompt ids kept as decoding context for the first generated token */
const CONTEXT_IDS = 4;

/** What a decoder yields for bytes that do not (yet) make a UTF-8 character. */
const REPLACEMENT_CHAR = '\uFFFD';

/** Where the first of the stop strings starts in `text`; -1 if none occurs. */
function firstStop(text: string, stops: readonly string[]): number {
  let first = -1;
  for (const stop of stops) {
    const at = text.indexOf(stop);
    if (at >= 0 && (first < 0 || at < first)) first = at;
  }
  return first;
}

/** The length of the longest end of `text` that is the start of a stop string (and not all of it). */
function stopStartAtEnd(text: string, stops: readonly string[]): number {
  let longest = 0;
  for (const stop of stops) {
    for (let length = Math.min(stop.length - 1, text.length); length > longest; length--) {
      if (text.endsWith(stop.slice(0, length))) longest = length;
    }
  }
  return longest;
}

export class TextStream {
  private readonly tokenizer: Pick<TextTokenizer, 'decode'>;
  private readonly stops: readonly string[];
  /** the ids from the prefix offset on */
  private window: number[] = [];
  /** how many ids of the window have their text out (the read offset, from the prefix offset) */
  private readCount = 0;
  /** decoded text held back because it may be the start of a stop string */
  private held = '';
  private emitted = '';
  private hitStop = false;

  /**
   * `context`: ids before the generated ones (the prompt's end), decoded but never emitted, so the first
   * generated token decodes as it does after the prompt (a SentencePiece leading space is kept).
   */
  constructor(
    tokenizer: Pick<TextTokenizer, 'decode'>,
    stop: readonly string[],
    context: ArrayLike<number> = [],
  ) {
    if (stop.some((s) => s === '')) fail('stop strings must not be empty');
    this.tokenizer = tokenizer;
    this.stops = stop;
    const tail = Array.from(context).slice(-CONTEXT_IDS);
    if (tail.length > 0 && !tokenizer.decode(tail).endsWith(REPLACEMENT_CHAR)) {
      this.window = tail;
      this.readCount = tail.length;
    }
  }

  /** true once a stop string appeared: `text` ends before it, and pushes return '' */
  get stopped(): boolean {
    return this.hitStop;
  }

  /** all text returned so far */
  get text(): string {
    return this.emitted;
  }

  /** Adds the next token; returns the text that became final ('' while it is incomplete). */
  push(id: number): string {
    if (this.hitStop) return '';
    this.window.push(id);
    return this.release(this.decodeNew(false), false);
  }

  /** Returns what was held back: trailing partial characters (as U+FFFD) and a possible stop-string start. */
  finish(): string {
    if (this.hitStop) return '';
    return this.release(this.decodeNew(true), true);
  }

  /** The text the ids after the read offset add, or '' while (not final) it ends in half a character. */
  private decodeNew(final: boolean): string {
    if (this.readCount === this.window.length) return '';
    // @huggingface/tokenizers refuses to decode no ids
    const before = this.readCount > 0 ? this.tokenizer.decode(this.window.slice(0, this.readCount)) : '';
    const after = this.tokenizer.decode(this.window);
    if (after.length <= before.length || (!final && after.endsWith(REPLACEMENT_CHAR))) return '';
    this.window = this.window.slice(this.readCount);
    this.readCount = this.window.length;
    return after.slice(before.length);
  }

  /** Emits held + fresh text up to a stop string (and stops) or up to what may start one. */
  private release(fresh: string, final: boolean): string {
    const text = this.held + fresh;
    const stopAt = firstStop(text, this.stops);
    let end = stopAt;
    if (stopAt >= 0) this.hitStop = true;
    else end = final ? text.length : text.length - stopStartAtEnd(text, this.stops);
    this.held = this.hitStop ? '' : text.slice(end);
    const out = text.slice(0, end);
    this.emitted += out;
    return out;
  }
}
