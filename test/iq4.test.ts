/**
 * llama.cpp's Q4_1, IQ4_NL and IQ4_XS writers and readers against ggml-quants.c itself
 * (test/fixtures/ggml-q4_1-iq4.json, made by ggml-make-q4_1-iq4.py from a compiled harness): the
 * blocks of quantize_q4_1 / quantize_iq4_nl / quantize_iq4_xs without and with an importance row, and
 * the values their dequantizers give.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { dequantizeQ4_1, ggmlGroupValues, quantizeQ4_1 } from '../src/formats/ggml.ts';
import {
  IQ4_LEVELS,
  nearestLevel,
  quantizeIq4Nl,
  quantizeIq4Xs,
  unpackIq4Nl,
  unpackIq4Xs,
} from '../src/formats/iq4.ts';
import { assertBlocksMatch, bytes, floats, type Source } from './block-fixtures.ts';

type Case = Record<'name' | 'q4_1' | 'iq4_nl' | 'iq4_xs' | `${'q4_1' | 'iq4_nl' | 'iq4_xs'}_values`, string>;

const inputs = JSON.parse(fs.readFileSync('test/fixtures/kquants-q5.json', 'utf8')) as { cases: Source[] };
const fixture = JSON.parse(fs.readFileSync('test/fixtures/ggml-q4_1-iq4.json', 'utf8')) as { cases: Case[] };

const TYPES = {
  q4_1: { bytes: 20, quantize: quantizeQ4_1, dequantize: (b: Uint8Array) => dequantizeQ4_1(b) },
  iq4_nl: {
    bytes: 18,
    quantize: quantizeIq4Nl,
    dequantize: (b: Uint8Array) => ggmlGroupValues(unpackIq4Nl(b)),
  },
  iq4_xs: {
    bytes: 136,
    quantize: quantizeIq4Xs,
    dequantize: (b: Uint8Array) => ggmlGroupValues(unpackIq4Xs(b)),
  },
} as const;

test('Q4_1, IQ4_NL and IQ4_XS blocks equal llama.cpp quantize_* byte for byte, without and with importance', () => {
  assert.equal(fixture.cases.length, 16);
  const sourceOf = (c: Case) => inputs.cases.find((s) => s.name === c.name) as Source;
  assert.equal(assertBlocksMatch(fixture.cases, sourceOf, TYPES), 6);
});

test('Q4_1, IQ4_NL and IQ4_XS dequantize bit for bit as llama.cpp', () => {
  for (const c of fixture.cases)
    for (const [type, t] of Object.entries(TYPES)) {
      const got = t.dequantize(bytes(c[type as keyof typeof TYPES]));
      assert.deepEqual(got, floats(c[`${type as keyof typeof TYPES}_values`]), `${c.name}: ${type}`);
    }
});

test('nearestLevel: the nearest of the 16 IQ4 levels, the upper one on a tie, clamped at the ends', () => {
  assert.equal(nearestLevel(-500), 0);
  assert.equal(nearestLevel(500), 15);
  assert.equal(nearestLevel(0), 8); // level 1 is nearer than -10
  assert.equal(nearestLevel(-4.5), 8); // halfway between -10 and 1: the upper
  assert.equal(nearestLevel(-4.6), 7);
  for (let i = 0; i < 15; i++) {
    const mid = (IQ4_LEVELS[i] + IQ4_LEVELS[i + 1]) / 2;
    assert.equal(nearestLevel(mid), i + 1, `tie between levels ${i} and ${i + 1}`);
    assert.equal(nearestLevel(mid - 0.01), i);
  }
});
