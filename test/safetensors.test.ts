import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { UserError } from '../src/errors.ts';
import {
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  openCheckpoint,
  openSafetensors,
  readFully,
  type SafetensorsDType,
  type TensorToWrite,
  writeSafetensors,
  writeShardedCheckpoint,
} from '../src/io/safetensors.ts';
import { bf16BitsToNumber, f16BitsToNumber, numberToBf16Bits, numberToF16Bits } from '../src/tensor/dtype.ts';
import { MODELS } from './helpers.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-st-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let seq = 0;
function tmpDir(): string {
  const d = path.join(root, `d${seq++}`);
  fs.mkdirSync(d);
  return d;
}

/** Builds a raw safetensors file from a header object and a data section. */
function rawFile(file: string, header: unknown, data: Uint8Array | number, headerText?: string): void {
  const json = Buffer.from(headerText ?? JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const body = typeof data === 'number' ? new Uint8Array(data) : data;
  fs.writeFileSync(file, Buffer.concat([len, json, body]));
}

/** Asserts fn throws a UserError whose message contains every fragment. */
function throwsUser(fn: () => unknown, ...fragments: string[]): string {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof UserError, `expected a UserError, got ${String(err)}`);
  const msg = err.message;
  assert.ok(!msg.includes('\n'), `message should be one line: ${msg}`);
  for (const f of fragments) assert.ok(msg.includes(f), `message ${JSON.stringify(msg)} should contain ${f}`);
  return msg;
}

function sampleTensors(): TensorToWrite[] {
  const n = 6;
  const shape = [2, 3];
  const mk: Record<SafetensorsDType, () => ArrayBufferView> = {
    F64: () => Float64Array.from({ length: n }, (_, i) => i * 0.1 - 0.2),
    F32: () => Float32Array.from({ length: n }, (_, i) => i * 1.5 - 3),
    F16: () => Uint16Array.from({ length: n }, (_, i) => 0x3c00 + i),
    BF16: () => Uint16Array.from({ length: n }, (_, i) => 0xbf80 + i),
    I64: () => BigInt64Array.from({ length: n }, (_, i) => BigInt(i) * -1234567890123n),
    I32: () => Int32Array.from({ length: n }, (_, i) => i * -100000),
    I16: () => Int16Array.from({ length: n }, (_, i) => i * -1000),
    I8: () => Int8Array.from({ length: n }, (_, i) => i * -20),
    U64: () => BigUint64Array.from({ length: n }, (_, i) => BigInt(i) * 2n ** 60n),
    U32: () => Uint32Array.from({ length: n }, (_, i) => i * 700000000),
    U16: () => Uint16Array.from({ length: n }, (_, i) => i * 10000),
    U8: () => Uint8Array.from({ length: n }, (_, i) => i * 40),
    BOOL: () => Uint8Array.from({ length: n }, (_, i) => i & 1),
    F8_E4M3: () => Uint8Array.from({ length: n }, (_, i) => 0x38 + i),
    F8_E5M2: () => Uint8Array.from({ length: n }, (_, i) => 0x3c + i),
    F8_E8M0: () => Uint8Array.from({ length: n }, (_, i) => 0x7f + i),
  };
  return (Object.keys(mk) as SafetensorsDType[]).map((dtype) => ({
    name: `t.${dtype.toLowerCase()}`,
    dtype,
    shape,
    data: mk[dtype](),
  }));
}

function bytesOf(v: ArrayBufferView): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

describe('safetensors write/read', () => {
  test('round trip of every dtype, metadata, shapes, SharedArrayBuffer-backed data', () => {
    const file = path.join(tmpDir(), 'all.safetensors');
    const tensors = sampleTensors();
    tensors.push({ name: 'scalar', dtype: 'F32', shape: [], data: new Float32Array([42]) });
    tensors.push({ name: 'empty', dtype: 'BF16', shape: [0, 4], data: new Uint16Array(0) });
    writeSafetensors(file, tensors, { format: 'pt', note: 'hello' });

    const buf = fs.readFileSync(file);
    const headerLen = Number(buf.readBigUInt64LE(0));
    assert.equal(headerLen % 8, 0, 'header padded to a multiple of 8');

    const st = openSafetensors(file);
    try {
      assert.deepEqual(st.metadata, { format: 'pt', note: 'hello' });
      assert.deepEqual(
        [...st.tensors.keys()],
        tensors.map((t) => t.name),
      );
      let expectOffset = 8 + headerLen;
      for (const t of tensors) {
        const info = st.tensors.get(t.name)!;
        assert.equal(info.byteOffset, expectOffset, `${t.name} contiguous`);
        expectOffset += info.byteLength;
        const r = st.read(t.name);
        assert.equal(r.dtype, t.dtype);
        assert.deepEqual(r.shape, [...t.shape]);
        assert.ok(r.data.buffer instanceof SharedArrayBuffer, 'shared backing store');
        assert.equal(r.data.constructor, t.data.constructor, `${t.name} typed array type`);
        assert.deepEqual(bytesOf(r.data), bytesOf(t.data));
      }
      assert.equal(expectOffset, buf.length);
      assert.deepEqual([...(st.read('t.f32').data as Float32Array)], [-3, -1.5, 0, 1.5, 3, 4.5]);
    } finally {
      st.close();
    }
  });

  test('write from a view into a larger buffer writes only the view', () => {
    const file = path.join(tmpDir(), 'view.safetensors');
    const big = new Float32Array([9, 1, 2, 3, 9]);
    writeSafetensors(file, [{ name: 'w', dtype: 'F32', shape: [3], data: big.subarray(1, 4) }], {});
    const st = openSafetensors(file);
    assert.deepEqual(st.metadata, {});
    assert.deepEqual([...(st.read('w').data as Float32Array)], [1, 2, 3]);
    st.close();
  });

  test('atomic write leaves no temp file and replaces the target', () => {
    const dir = tmpDir();
    const file = path.join(dir, 'model.safetensors');
    writeSafetensors(file, [{ name: 'a', dtype: 'F32', shape: [1], data: new Float32Array([1]) }]);
    writeSafetensors(file, [{ name: 'b', dtype: 'F32', shape: [1], data: new Float32Array([2]) }]);
    assert.deepEqual(fs.readdirSync(dir), ['model.safetensors']);
    const st = openSafetensors(file);
    assert.deepEqual([...st.tensors.keys()], ['b']);
    st.close();
  });

  test('a failed write (bad data size) leaves neither output nor temp file', () => {
    const dir = tmpDir();
    const file = path.join(dir, 'model.safetensors');
    throwsUser(
      () =>
        writeSafetensors(file, [
          { name: 'x.weight', dtype: 'F32', shape: [2, 2], data: new Float32Array(3) },
        ]),
      'x.weight',
      '16',
      '12',
    );
    assert.deepEqual(fs.readdirSync(dir), []);
  });

  test('readFully reads in chunks and across short reads', () => {
    const file = path.join(tmpDir(), 'chunks.bin');
    const src = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 255);
    fs.writeFileSync(file, src);
    const fd = fs.openSync(file, 'r');
    try {
      const dst = new Uint8Array(new SharedArrayBuffer(990));
      readFully(fd, dst, 10, 'chunks', 64);
      assert.deepEqual(dst, src.subarray(10));
      throwsUser(() => readFully(fd, new Uint8Array(20), 990, 'chunks', 8), 'chunks', 'file ended');
    } finally {
      fs.closeSync(fd);
    }
  });

  test('reads the shared llama-tiny checkpoint', () => {
    const dir = `${MODELS}llama-tiny`;
    if (!fs.existsSync(dir)) return;
    const ck = openCheckpoint(dir);
    try {
      assert.ok(ck.has('model.embed_tokens.weight'));
      const info = ck.info('model.embed_tokens.weight');
      assert.equal(info.dtype, 'BF16');
      assert.deepEqual(info.shape, [8192, 256]);
      const t = ck.read('model.layers.0.input_layernorm.weight');
      assert.ok(t.data instanceof Uint16Array);
      const vals = bf16ToF32(t.data as Uint16Array);
      assert.ok(vals.every(Number.isFinite));
      assert.ok(ck.totalBytes > 7e6 * 2 * 0.9);
    } finally {
      ck.close();
    }
  });
});

describe('sharded checkpoints', () => {
  test('writeShardedCheckpoint + openCheckpoint', () => {
    const dir = path.join(tmpDir(), 'out');
    const tensors: TensorToWrite[] = [];
    for (let i = 0; i < 5; i++) {
      tensors.push({
        name: `model.layers.${i}.w`,
        dtype: 'F32',
        shape: [4, 4],
        data: Float32Array.from({ length: 16 }, (_, j) => i * 100 + j),
      });
    }
    tensors.push({
      name: 'lm_head.weight',
      dtype: 'BF16',
      shape: [8],
      data: new Uint16Array(8).fill(0x3f80),
    });
    const files = writeShardedCheckpoint(dir, tensors, 140); // 64-byte tensors: two per shard
    assert.deepEqual(files, [
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
    ]);
    assert.deepEqual(fs.readdirSync(dir).sort(), [...files, 'model.safetensors.index.json'].sort());
    const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
    assert.equal(index.metadata.total_size, 5 * 64 + 16);
    assert.equal(index.weight_map['lm_head.weight'], 'model-00003-of-00003.safetensors');

    const ck = openCheckpoint(dir);
    try {
      assert.deepEqual(
        ck.names(),
        tensors.map((t) => t.name),
      );
      assert.equal(ck.files.length, 3);
      assert.equal(ck.totalBytes, 5 * 64 + 16);
      assert.equal(ck.info('model.layers.3.w').file, path.join(dir, files[1]));
      for (const t of tensors) assert.deepEqual(bytesOf(ck.read(t.name).data), bytesOf(t.data));
      assert.ok(!ck.has('nope'));
      throwsUser(() => ck.read('nope'), dir, '"nope"');
    } finally {
      ck.close();
    }
  });

  test('single model.safetensors directory and a direct file path', () => {
    const dir = tmpDir();
    writeSafetensors(path.join(dir, 'model.safetensors'), [
      { name: 'a', dtype: 'I32', shape: [2], data: new Int32Array([5, -6]) },
    ]);
    for (const p of [dir, path.join(dir, 'model.safetensors')]) {
      const ck = openCheckpoint(p);
      assert.deepEqual(ck.names(), ['a']);
      assert.deepEqual([...(ck.read('a').data as Int32Array)], [5, -6]);
      assert.deepEqual(ck.files, [path.join(dir, 'model.safetensors')]);
      ck.close();
    }
  });

  test('index naming a missing shard', () => {
    const dir = tmpDir();
    writeShardedCheckpoint(
      dir,
      [
        { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) },
        { name: 'b', dtype: 'F32', shape: [1], data: new Float32Array(1) },
      ],
      4,
    );
    fs.rmSync(path.join(dir, 'model-00002-of-00002.safetensors'));
    throwsUser(
      () => openCheckpoint(dir),
      'model.safetensors.index.json',
      'model-00002-of-00002.safetensors',
      'does not exist',
    );
  });

  test('index mapping a tensor its shard does not hold', () => {
    const dir = tmpDir();
    writeShardedCheckpoint(dir, [{ name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) }], 1024);
    const indexPath = path.join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
    index.weight_map['model.norm.weight'] = 'model-00001-of-00001.safetensors';
    fs.writeFileSync(indexPath, JSON.stringify(index));
    throwsUser(
      () => openCheckpoint(dir),
      indexPath,
      '"model.norm.weight"',
      'model-00001-of-00001.safetensors',
    );
  });

  test('index shard names may not leave the directory', () => {
    const dir = tmpDir();
    fs.writeFileSync(
      path.join(dir, 'model.safetensors.index.json'),
      JSON.stringify({ weight_map: { a: '../evil.safetensors' } }),
    );
    throwsUser(() => openCheckpoint(dir), 'weight_map', '"a"', '../evil.safetensors');
  });

  test('pickle-only directory is refused, never read', () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), 'not really a pickle');
    fs.writeFileSync(path.join(dir, 'config.json'), '{}');
    throwsUser(
      () => openCheckpoint(dir),
      dir,
      'only pickle checkpoints (pytorch_model.bin)',
      'never executed',
    );
    const dir2 = tmpDir();
    fs.writeFileSync(path.join(dir2, 'consolidated.00.pth'), 'x');
    throwsUser(() => openCheckpoint(dir2), dir2, 'consolidated.00.pth', 'pickle');
    throwsUser(() => openCheckpoint(path.join(dir, 'pytorch_model.bin')), 'pytorch_model.bin', 'pickle');
  });

  test('empty and missing directories', () => {
    const dir = tmpDir();
    throwsUser(() => openCheckpoint(dir), dir, 'no model weights found');
    throwsUser(() => openCheckpoint(path.join(dir, 'nope')), 'nope', 'no such directory');
  });
});

describe('safetensors validation', () => {
  const f32 = (shape: number[], begin: number, end: number) => ({
    dtype: 'F32',
    shape,
    data_offsets: [begin, end],
  });

  test('file shorter than 8 bytes', () => {
    const file = path.join(tmpDir(), 'short.safetensors');
    fs.writeFileSync(file, Buffer.from([1, 2, 3, 4, 5]));
    throwsUser(() => openSafetensors(file), file, '5 bytes', 'too short');
  });

  test('missing file', () => {
    const file = path.join(tmpDir(), 'missing.safetensors');
    throwsUser(() => openSafetensors(file), file, 'no such file');
  });

  test('header length past EOF (truncated file)', () => {
    const file = path.join(tmpDir(), 'trunc.safetensors');
    writeSafetensors(file, [{ name: 'x.weight', dtype: 'F32', shape: [4], data: new Float32Array(4) }]);
    const full = fs.readFileSync(file);
    fs.writeFileSync(file, full.subarray(0, 20));
    throwsUser(() => openSafetensors(file), file, 'header length', 'past the end of the file');
  });

  test('truncated data section (tensor past EOF)', () => {
    const file = path.join(tmpDir(), 'trunc2.safetensors');
    writeSafetensors(file, [{ name: 'x.weight', dtype: 'F32', shape: [16], data: new Float32Array(16) }]);
    const full = fs.readFileSync(file);
    fs.writeFileSync(file, full.subarray(0, full.length - 4));
    throwsUser(
      () => openSafetensors(file),
      file,
      '"x.weight"',
      'data_offsets [0, 64] exceed the data section (60 bytes)',
    );
  });

  test('malformed JSON header', () => {
    const file = path.join(tmpDir(), 'bad.safetensors');
    rawFile(file, null, 0, '{"x.weight": {"dtype": "F32",');
    throwsUser(() => openSafetensors(file), file, 'not valid JSON');
  });

  test('header that is not an object', () => {
    const file = path.join(tmpDir(), 'arr.safetensors');
    rawFile(file, [1, 2], 0);
    throwsUser(() => openSafetensors(file), file, 'JSON object', 'array');
  });

  test('unknown dtype', () => {
    const file = path.join(tmpDir(), 'dtype.safetensors');
    rawFile(file, { 'x.weight': { dtype: 'F4', shape: [2], data_offsets: [0, 1] } }, 1);
    throwsUser(() => openSafetensors(file), file, '"x.weight"', 'unsupported dtype "F4"', 'BF16');
  });

  test('bad shape', () => {
    const file = path.join(tmpDir(), 'shape.safetensors');
    rawFile(file, { 'x.weight': f32([2, -1], 0, 8) }, 8);
    throwsUser(() => openSafetensors(file), file, '"x.weight"', 'shape', 'non-negative integers');
  });

  test('byte size does not match dtype x shape', () => {
    const file = path.join(tmpDir(), 'size.safetensors');
    rawFile(file, { 'x.weight': f32([2, 3], 0, 20) }, 20);
    throwsUser(() => openSafetensors(file), file, '"x.weight"', 'is 20 bytes', 'needs 24');
  });

  test('offsets out of range of the data section', () => {
    const file = path.join(tmpDir(), 'range.safetensors');
    rawFile(file, { 'a.weight': f32([16], 0, 64), 'x.weight': f32([25], 64, 164) }, 64);
    throwsUser(
      () => openSafetensors(file),
      file,
      '"x.weight"',
      'data_offsets [64, 164] exceed the data section (64 bytes)',
    );
  });

  test('overlapping tensors', () => {
    const file = path.join(tmpDir(), 'overlap.safetensors');
    rawFile(file, { 'a.weight': f32([4], 0, 16), 'b.weight': f32([4], 8, 24) }, 24);
    throwsUser(() => openSafetensors(file), file, '"b.weight"', 'overlap', '"a.weight"');
  });

  test('gap between tensors', () => {
    const file = path.join(tmpDir(), 'gap.safetensors');
    rawFile(file, { 'a.weight': f32([2], 0, 8), 'b.weight': f32([2], 12, 20) }, 20);
    throwsUser(() => openSafetensors(file), file, '4 unused bytes', '"a.weight"', '"b.weight"');
  });

  test('data section not starting at 0', () => {
    const file = path.join(tmpDir(), 'start.safetensors');
    rawFile(file, { 'a.weight': f32([2], 8, 16) }, 16);
    throwsUser(
      () => openSafetensors(file),
      file,
      '8 unused bytes',
      'start of the data section',
      '"a.weight"',
    );
  });

  test('trailing bytes after the last tensor', () => {
    const file = path.join(tmpDir(), 'tail.safetensors');
    rawFile(file, { 'a.weight': f32([2], 0, 8) }, 12);
    throwsUser(() => openSafetensors(file), file, '4 trailing bytes');
  });

  test('bad data_offsets and metadata', () => {
    const dir = tmpDir();
    const a = path.join(dir, 'a.safetensors');
    rawFile(a, { 'x.weight': { dtype: 'F32', shape: [1], data_offsets: [4] } }, 4);
    throwsUser(() => openSafetensors(a), a, '"x.weight"', 'data_offsets');
    const b = path.join(dir, 'b.safetensors');
    rawFile(b, { __metadata__: { format: 1 }, 'x.weight': f32([1], 0, 4) }, 4);
    throwsUser(() => openSafetensors(b), b, '__metadata__', '"format"');
  });

  test('header with tolerated padding and empty file', () => {
    const file = path.join(tmpDir(), 'pad.safetensors');
    rawFile(
      file,
      null,
      new Uint8Array([0, 0, 0x80, 0x3f]),
      '{"one":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}   ',
    );
    const st = openSafetensors(file);
    assert.deepEqual([...(st.read('one').data as Float32Array)], [1]);
    st.close();
    const empty = path.join(tmpDir(), 'empty.safetensors');
    writeSafetensors(empty, [], {});
    const e = openSafetensors(empty);
    assert.equal(e.tensors.size, 0);
    e.close();
  });
});

describe('16-bit float conversions', () => {
  const bits16 = (xs: number[], conv: (x: Float32Array) => Uint16Array) => [...conv(new Float32Array(xs))];
  const hex = (a: number[]) => a.map((x) => `0x${x.toString(16).padStart(4, '0')}`);

  test('f32 -> bf16 round to nearest even, inf, nan', () => {
    const f = (b: number) => new Float32Array(new Uint32Array([b]).buffer)[0];
    const cases: [number, number][] = [
      [0x3f800000, 0x3f80], // 1
      [0x3f808000, 0x3f80], // 1 + half ulp: tie -> even (down)
      [0x3f818000, 0x3f82], // 1 + 3 half ulps: tie -> even (up)
      [0x3f808001, 0x3f81], // just above the tie
      [0x3f807fff, 0x3f80], // just below the tie
      [0xbf808000, 0xbf80], // negative tie
      [0x7f7fffff, 0x7f80], // FLT_MAX rounds to inf
      [0x7f800000, 0x7f80], // inf
      [0xff800000, 0xff80], // -inf
      [0x7fc00000, 0x7fc0], // nan
      [0xffc00001, 0x7fc0], // negative nan with payload -> canonical (torch)
      [0x00000001, 0x0000], // smallest f32 subnormal -> +0
      [0x80000000, 0x8000], // -0
      [0x00018000, 0x0002], // subnormal tie -> even
    ];
    assert.deepEqual(
      hex(
        bits16(
          cases.map(([b]) => f(b)),
          f32ToBf16,
        ),
      ),
      hex(cases.map(([, h]) => h)),
    );
    assert.equal(numberToBf16Bits(3.140625), 0x4049);
  });

  test('f32 -> f16 round to nearest even, subnormals, overflow, inf, nan', () => {
    const cases: [number, number][] = [
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff], // max f16
      [65519.99, 0x7bff], // below the overflow threshold
      [65520, 0x7c00], // tie between 65504 and 65536 -> even -> inf
      [1e10, 0x7c00],
      [-Infinity, 0xfc00],
      [Number.NaN, 0x7e00],
      [1 + 2 ** -11, 0x3c00], // tie -> even (down)
      [1 + 3 * 2 ** -11, 0x3c02], // tie -> even (up)
      [1 + 2 ** -11 + 2 ** -20, 0x3c01], // above the tie
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // half the smallest subnormal: tie -> even (0)
      [1.5 * 2 ** -25, 0x0001], // above half -> rounds up
      [3 * 2 ** -25, 0x0002], // 1.5 subnormal units: tie -> even (2)
      [5 * 2 ** -25, 0x0002], // 2.5 units: tie -> even (2)
      [2 ** -14 - 2 ** -25, 0x0400], // largest subnormal + half unit: tie -> even -> smallest normal
      [-(2 ** -24), 0x8001],
      [2 ** -26, 0x0000],
      [-0, 0x8000],
      [0.1, 0x2e66],
      [0.333251953125, 0x3555], // exact f16 value
    ];
    assert.deepEqual(
      hex(
        bits16(
          cases.map(([x]) => x),
          f32ToF16,
        ),
      ),
      hex(cases.map(([, h]) => h)),
    );
    const negNan = new Float32Array(new Uint32Array([0xffc00000]).buffer);
    assert.deepEqual(hex([...f32ToF16(negNan)]), ['0xfe00']);
  });

  test('bf16 / f16 -> f32 exact', () => {
    assert.deepEqual(
      [...bf16ToF32(new Uint16Array([0x3f80, 0xc049, 0x7f80, 0xff80, 0x0001, 0x8000]))],
      [1, -3.140625, Infinity, -Infinity, 2 ** -133, -0],
    );
    assert.ok(Number.isNaN(bf16BitsToNumber(0x7fc1)));
    assert.deepEqual(
      [
        ...f16ToF32(
          new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x7c00, 0xfc00, 0x8000, 0x3555]),
        ),
      ],
      [1, -2, 65504, 2 ** -24, 1023 * 2 ** -24, 2 ** -14, Infinity, -Infinity, -0, 0.333251953125],
    );
    assert.ok(Number.isNaN(f16BitsToNumber(0x7e00)));
    const nanBits = new Uint32Array(f16ToF32(new Uint16Array([0xfe01])).buffer)[0];
    assert.equal(nanBits, 0xffc02000, 'f16 nan payload and sign kept');
  });

  test('every f16 value survives f16 -> f32 -> f16; bf16 likewise', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const back = f32ToF16(f16ToF32(all));
    for (let i = 0; i < 65536; i++) {
      const isNan = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
      if (isNan) assert.equal(back[i] & 0x7e00, 0x7e00);
      else assert.equal(back[i], i, `f16 0x${i.toString(16)}`);
    }
    const bback = f32ToBf16(bf16ToF32(all));
    for (let i = 0; i < 65536; i++) {
      const isNan = (i & 0x7f80) === 0x7f80 && (i & 0x7f) !== 0;
      assert.equal(bback[i], isNan ? 0x7fc0 : i, `bf16 0x${i.toString(16)}`);
    }
  });

  test('f32 -> f16 agrees with a float64 reference rounding on random values', () => {
    // reference: nearest f16 value by exhaustive comparison of neighbours, ties to even
    let s = 12345;
    const rnd = () => {
      s = (s * 1103515245 + 12345) >>> 0;
      return s / 2 ** 32;
    };
    const xs = new Float32Array(2000);
    for (let i = 0; i < xs.length; i++) xs[i] = (rnd() - 0.5) * 2 ** Math.floor(rnd() * 44 - 28);
    const h = f32ToF16(xs);
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i];
      const v = f16BitsToNumber(h[i]);
      const up = f16BitsToNumber(h[i] + 1);
      const down = h[i] & 0x7fff ? f16BitsToNumber(h[i] - 1) : v;
      const err = Math.abs(x - v);
      assert.ok(err <= Math.abs(x - up) && err <= Math.abs(x - down), `x=${x} -> 0x${h[i].toString(16)}`);
      assert.equal(numberToF16Bits(x), h[i]);
    }
  });
});
