/**
 * llama.cpp's IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M writers and readers against ggml-quants.c itself
 * (test/fixtures/ggml-lattice.json, made by ggml-make-lattice.py from a compiled harness): the blocks of
 * quantize_iq3_xxs / quantize_iq3_s / quantize_iq2_s / quantize_iq1_m without and with an importance row (quantize_iq2_xxs /
 * quantize_iq2_xs / quantize_iq1_s, which require one: an all-ones row where a case has none), the values their
 * dequantizers give, and codes -> blocks as the checkpoint path rebuilds them.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { ggmlGroupValues } from '../src/formats/ggml.ts';
import {
  packIq1MCodes,
  packIq1SCodes,
  quantizeIq1M,
  quantizeIq1S,
  unpackIq1M,
  unpackIq1S,
} from '../src/formats/iq1.ts';
import {
  packIq2SCodes,
  packIq2XsCodes,
  packIq2XxsCodes,
  quantizeIq2S,
  quantizeIq2Xs,
  quantizeIq2Xxs,
  unpackIq2S,
  unpackIq2Xs,
  unpackIq2Xxs,
} from '../src/formats/iq2.ts';
import {
  packIq3SCodes,
  packIq3XxsCodes,
  quantizeIq3S,
  quantizeIq3Xxs,
  unpackIq3S,
  unpackIq3Xxs,
} from '../src/formats/iq3.ts';
import { assertBlocksMatch, bytes, firstBadBlock, floats, type Source } from './block-fixtures.ts';

type Case = Partial<Source> & Record<'name' | keyof typeof TYPES | `${keyof typeof TYPES}_values`, string>;

const inputs = JSON.parse(fs.readFileSync('test/fixtures/kquants-q5.json', 'utf8')) as { cases: Source[] };
const fixture = JSON.parse(fs.readFileSync('test/fixtures/ggml-lattice.json', 'utf8')) as { cases: Case[] };

const TYPES = {
  iq3_xxs: {
    bytes: 98,
    quantize: quantizeIq3Xxs,
    unpack: unpackIq3Xxs,
    pack: packIq3XxsCodes,
    header: [
      [0, 2],
      [66, 98],
    ],
  },
  iq2_s: {
    bytes: 82,
    quantize: quantizeIq2S,
    unpack: unpackIq2S,
    pack: packIq2SCodes,
    header: [
      [0, 2],
      [74, 82],
    ],
  },
  iq3_s: {
    bytes: 110,
    quantize: quantizeIq3S,
    unpack: unpackIq3S,
    pack: packIq3SCodes,
    header: [
      [0, 2],
      [106, 110],
    ],
  },
  iq2_xxs: {
    bytes: 66,
    quantize: quantizeIq2Xxs,
    unpack: unpackIq2Xxs,
    pack: packIq2XxsCodes,
    // d, and each 32's u32 of sign masks and 4-bit scale
    header: [[0, 2], ...Array.from({ length: 8 }, (_, ib) => [6 + 8 * ib, 10 + 8 * ib])],
  },
  iq2_xs: {
    bytes: 74,
    quantize: quantizeIq2Xs,
    unpack: unpackIq2Xs,
    pack: packIq2XsCodes,
    header: [
      [0, 2],
      [66, 74],
    ],
  },
  iq1_s: {
    bytes: 50,
    quantize: quantizeIq1S,
    unpack: unpackIq1S,
    pack: packIq1SCodes,
    header: [
      [0, 2],
      [34, 50],
    ],
  },
  iq1_m: { bytes: 56, quantize: quantizeIq1M, unpack: unpackIq1M, pack: packIq1MCodes, header: [[32, 56]] },
} as const;

const sourceOf = (c: Case) =>
  c.input ? (c as Source) : (inputs.cases.find((s) => s.name === c.name) as Source);

test('IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M blocks equal llama.cpp quantize_* byte for byte, without and with importance', () => {
  assert.equal(fixture.cases.length, 18);
  assert.equal(assertBlocksMatch(fixture.cases, sourceOf, TYPES), 7);
});

test('IQ3, IQ2 and IQ1 types dequantize bit for bit as llama.cpp (codes times scale times level)', () => {
  for (const c of fixture.cases)
    for (const [type, t] of Object.entries(TYPES)) {
      const got = ggmlGroupValues(t.unpack(bytes(c[type as keyof typeof TYPES])));
      assert.deepEqual(got, floats(c[`${type as keyof typeof TYPES}_values`]), `${c.name}: ${type}`);
    }
});

test('IQ3 / IQ2 / IQ1 codes plus the header bytes rebuild each block exactly', () => {
  for (const c of fixture.cases)
    for (const [type, t] of Object.entries(TYPES)) {
      const want = bytes(c[type as keyof typeof TYPES]);
      const codes = t.unpack(want).codes;
      const got = new Uint8Array(want.length);
      for (let b = 0; b < want.length / t.bytes; b++) {
        for (const [h0, h1] of t.header)
          got.set(want.subarray(b * t.bytes + h0, b * t.bytes + h1), b * t.bytes + h0);
        t.pack(codes, b * 256, got, b * t.bytes);
      }
      assert.equal(firstBadBlock(got, want, t.bytes), -1, `${c.name}: ${type}`);
    }
});

test('IQ3 codes whose levels are off the grid are refused', () => {
  const codes = new Uint8Array(256).fill(7); // levels (7,7,7,7): not an IQ3_XXS grid point
  assert.throws(() => packIq3XxsCodes(codes, 0, new Uint8Array(98), 0), /not a grid point/);
});
