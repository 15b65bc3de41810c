import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { TextStream } from '../src/runtime/text-stream.ts';
import { MODELS, rng } from './helpers.ts';

const tokenizer = loadTokenizer(`${MODELS}llama-small`);
const BOS = 0;

const TEXTS = [
  'Héllo 🦙 世界 naïve café, señor!',
  'Ünïcödé 👩‍👩‍👧 family, 🇫🇷 flag, 😀😀😀 and ∑ x² ≤ ∞',
  '日本語のテキスト。中文也可以！한국어도 됩니다.',
  'plain ascii  with double spaces\nand\n\nnew lines\tand tabs ',
];

/** The prompt-free ids of `text` (the tokenizer puts BOS first). */
function idsOf(text: string): number[] {
  const ids = Array.from(tokenizer.encode(text));
  assert.equal(ids[0], BOS);
  return ids.slice(1);
}

/** Pushes `ids` one by one; returns every delta (finish()'s last) and the stream. */
function streamAll(ids: number[], stops: readonly string[] = []) {
  const stream = new TextStream(tokenizer, stops);
  const deltas = ids.map((id) => stream.push(id));
  deltas.push(stream.finish());
  return { deltas, stream };
}

test('the deltas add up to the decode of all ids, never ending in half a character', () => {
  for (const text of TEXTS) {
    const ids = idsOf(text);
    assert.equal(tokenizer.decode(ids), text);
    // the multi-byte characters are split across tokens, so the holding back is exercised
    const multiByte = [...text].some((c) => c.codePointAt(0)! > 0x7f);
    assert.equal(
      ids.some((id) => tokenizer.decode([id]).includes('\uFFFD')),
      multiByte,
      text,
    );
    for (const withBos of [ids, [BOS, ...ids]]) {
      const { deltas, stream } = streamAll(withBos);
      assert.equal(deltas.join(''), tokenizer.decode(withBos));
      assert.equal(stream.text, tokenizer.decode(withBos));
      for (const delta of deltas) assert.ok(!delta.endsWith('\uFFFD'), JSON.stringify(delta));
    }
  }
});

test('text comes out as soon as it is complete', () => {
  const ids = idsOf(TEXTS.join(' '));
  const stream = new TextStream(tokenizer, []);
  for (let i = 0; i < ids.length; i++) {
    stream.push(ids[i]);
    const sofar = tokenizer.decode(ids.slice(0, i + 1));
    if (!sofar.endsWith('\uFFFD')) assert.equal(stream.text, sofar);
  }
});

test('each token decodes a window of a few ids, not everything so far', () => {
  const longest = { ids: 0 };
  const counting = {
    decode(ids: ArrayLike<number>) {
      longest.ids = Math.max(longest.ids, ids.length);
      return tokenizer.decode(ids);
    },
  };
  const ids = idsOf(TEXTS.join(' ').repeat(10));
  assert.ok(ids.length > 500);
  const stream = new TextStream(counting, []);
  for (const id of ids) stream.push(id);
  stream.finish();
  assert.equal(stream.text, tokenizer.decode(ids));
  assert.ok(longest.ids <= 10, `decoded ${longest.ids} ids at once`);
});

/** `text` before the first occurrence of any stop string. */
function beforeStop(text: string, stops: readonly string[]): string {
  const at = stops.map((s) => text.indexOf(s)).filter((i) => i >= 0);
  return at.length ? text.slice(0, Math.min(...at)) : text;
}

/**
 * What generation with these stop strings must give: the text of the first ids whose text holds a stop
 * string, cut before it. (That is the whole text cut before its first stop string, unless a stop string
 * that starts earlier would end later: generation ends at the stop string that ends first.)
 */
function expectedText(ids: number[], stops: readonly string[]): string {
  for (let count = 1; count <= ids.length; count++) {
    const text = tokenizer.decode(ids.slice(0, count));
    const cut = beforeStop(text, stops);
    if (cut !== text) return cut;
  }
  return tokenizer.decode(ids);
}

/** What a stream must have emitted after the complete text `text`: less an end that may begin a stop string. */
function safeToEmit(text: string, stops: readonly string[]): string {
  const cut = beforeStop(text, stops);
  if (cut !== text) return cut;
  let held = 0;
  for (const stop of stops) {
    for (let n = 1; n < stop.length && n <= text.length; n++)
      if (text.endsWith(stop.slice(0, n))) held = Math.max(held, n);
  }
  return text.slice(0, text.length - held);
}

test('stop strings end the text before them, and no delta holds any of them', () => {
  const text = 'The llama 🦙 said: 世界 hello there. END of story ### more, The END';
  const cases: string[][] = [
    ['END'],
    ['###', 'END'],
    ['🦙'],
    ['世界', '世'],
    ['llama 🦙 s'],
    ['The'],
    ['T'],
    ['hello world', 'hello there', 'hell'],
    // 'ory #' ends first, so the text keeps the 'st' of the later 'story ##'
    ['ory #', 'story ##'],
    ['zzz'],
    ['The EN'],
    ['. E', ' E'],
  ];
  const ids = idsOf(text);
  for (const stops of cases) {
    const expected = expectedText(ids, stops);
    const cutAt = stops[0] === 'ory #' ? text.indexOf('ory #') : -1;
    assert.equal(expected, cutAt >= 0 ? text.slice(0, cutAt) : beforeStop(text, stops));
    const stream = new TextStream(tokenizer, stops);
    const deltas: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      const ended = stream.stopped;
      deltas.push(stream.push(ids[i]));
      const sofar = tokenizer.decode(ids.slice(0, i + 1));
      if (!ended && !sofar.endsWith('\uFFFD')) {
        assert.equal(stream.text, safeToEmit(sofar, stops), JSON.stringify(stops));
      }
    }
    deltas.push(stream.finish());
    const label = JSON.stringify({ stops, deltas });
    assert.equal(deltas.join(''), expected, label);
    assert.equal(stream.text, expected, label);
    assert.equal(stream.stopped, expected !== text, label);
    for (const delta of deltas) for (const stop of stops) assert.ok(!delta.includes(stop), label);
    if (stream.stopped) assert.equal(stream.push(ids[0]), '');
  }
});

test('a possible stop string at the end comes out on finish', () => {
  const text = 'waiting for the EN';
  const { deltas, stream } = streamAll(idsOf(text), ['END']);
  assert.ok(!deltas.slice(0, -1).join('').endsWith('EN'));
  assert.equal(deltas.at(-1), 'EN');
  assert.equal(stream.text, text);
  assert.equal(stream.stopped, false);
});

/** source[at, at + length) less a half surrogate pair at either end. */
function wholeSlice(source: string, at: number, length: number): string {
  return source.slice(at, at + length).replace(/^[\uDC00-\uDFFF]|[\uD800-\uDBFF]$/g, '');
}

test('random pieces of text and random stop strings against the naive expectation', () => {
  const random = rng(5);
  const source = TEXTS.join(' ');
  const randomAt = () => Math.floor(random.uniform() * source.length);
  let stoppedCount = 0;
  for (let trial = 0; trial < 60; trial++) {
    const text = wholeSlice(source, randomAt(), 40);
    const stops = Array.from(
      { length: 1 + Math.floor(random.uniform() * 3) },
      () => wholeSlice(source, randomAt(), 1 + Math.floor(random.uniform() * 4)) || 'x',
    );
    const ids = idsOf(text);
    const { deltas, stream } = streamAll(ids, stops);
    const expected = expectedText(ids, stops);
    assert.equal(stream.text, expected, JSON.stringify({ text, stops }));
    assert.equal(deltas.join(''), expected);
    if (stream.stopped) stoppedCount++;
  }
  assert.ok(stoppedCount > 10 && stoppedCount < 50, `${stoppedCount} of 60 stopped`);
});

test('empty stop strings are refused', () => {
  assert.throws(() => new TextStream(tokenizer, ['ok', '']), { name: 'UserError', message: /stop strings/ });
});

/**
 * A SentencePiece-like tokenizer: pieces with '▁' for spaces and <0xNN> byte pieces, decoded like
 * Llama 2's tokenizer.json (Replace '▁' by ' ', ByteFallback, Fuse, Strip one leading space).
 */
const PIECES = [
  '▁Hello',
  '▁world',
  ',',
  '▁how',
  '▁',
  'are',
  '▁you',
  '?',
  '<0xE4>',
  '<0xB8>',
  '<0x96>',
  '<0xF0>',
  'é',
];
const metaspace = {
  decode(ids: ArrayLike<number>): string {
    const bytes = Array.from(ids).flatMap((id) => {
      const piece = PIECES[id];
      const byte = /^<0x([0-9A-F]{2})>$/.exec(piece);
      return byte ? [Number.parseInt(byte[1], 16)] : [...Buffer.from(piece.replaceAll('▁', ' '))];
    });
    const text = new TextDecoder().decode(Uint8Array.from(bytes));
    return text.startsWith(' ') ? text.slice(1) : text;
  },
};

test('a decoder that strips the leading space still streams the decode of all ids', () => {
  const ids = [0, 1, 2, 3, 4, 8, 9, 10, 6, 7];
  const expected = 'Hello world, how 世 you?';
  assert.equal(metaspace.decode(ids), expected);
  // decoding each new token alone would lose the spaces
  assert.notEqual(ids.map((id) => metaspace.decode([id])).join(''), expected);
  const stream = new TextStream(metaspace, []);
  const deltas = ids.map((id) => stream.push(id));
  assert.deepEqual(deltas, ['Hello', ' world', ',', ' how', ' ', '', '', '世', ' you', '?']);
  assert.equal(stream.finish(), '');

  const random = rng(6);
  for (let trial = 0; trial < 200; trial++) {
    const ids = Array.from({ length: 1 + Math.floor(random.uniform() * 12) }, () =>
      Math.floor(random.uniform() * PIECES.length),
    );
    const stream = new TextStream(metaspace, []);
    const deltas = ids.map((id) => stream.push(id));
    deltas.push(stream.finish());
    assert.equal(deltas.join(''), metaspace.decode(ids), JSON.stringify(ids));
    for (const delta of deltas.slice(0, -1)) assert.ok(!delta.endsWith('\uFFFD'), JSON.stringify(ids));
  }
});

test('stop strings after a stripped leading space', () => {
  const ids = [0, 1, 2, 3, 6, 7];
  for (const [stops, expected] of [
    [[' world'], 'Hello'],
    [['Hello'], ''],
    [['o w', 'rld'], 'Hell'],
    [[', how you'], 'Hello world'],
    [[', how are'], 'Hello world, how you?'],
  ] as const) {
    const stream = new TextStream(metaspace, stops);
    const deltas = ids.map((id) => stream.push(id));
    deltas.push(stream.finish());
    assert.equal(deltas.join(''), expected, JSON.stringify(stops));
    assert.equal(stream.text, expected);
  }
});

test('prompt context keeps the leading space of the first generated token', () => {
  // prompt "Hello" then generated " world, how": decode(all) minus decode(prompt)
  const prompt = [0];
  const generated = [1, 2, 3];
  const stream = new TextStream(metaspace, [], prompt);
  const deltas = generated.map((id) => stream.push(id));
  deltas.push(stream.finish());
  assert.deepEqual(deltas, [' world', ',', ' how', '']);
  const expected = metaspace.decode([...prompt, ...generated]).slice(metaspace.decode(prompt).length);
  assert.equal(stream.text, expected);
  // without context the stripped decode loses it, as decode(generated ids) does
  const bare = new TextStream(metaspace, []);
  assert.equal(generated.map((id) => bare.push(id)).join(''), 'world, how');
  // a prompt ending in half a character is no context: the completing byte then stands alone
  const half = new TextStream(metaspace, [], [8, 9]);
  assert.deepEqual(
    [10, 6].map((id) => half.push(id)),
    ['', '\uFFFD you'],
  );
});
