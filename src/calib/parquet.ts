/** The string column of a .parquet file (a Hugging Face dataset split, usually), through hyparquet. */
import zlib from 'node:zlib';
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects, parquetSchema } from 'hyparquet';
import { fail } from '../errors.ts';

type Decompress = (input: Uint8Array, outputLength: number) => Uint8Array;

// hyparquet decodes UNCOMPRESSED and SNAPPY itself; node's zlib adds these (zstd only on Node >= 22.15).
function nodeDecompressors(): Record<string, Decompress> {
  const out: Record<string, Decompress> = {
    GZIP: (input) => zlib.gunzipSync(input),
    BROTLI: (input) => zlib.brotliDecompressSync(input),
  };
  const zstd = (zlib as unknown as { zstdDecompressSync?: (b: Uint8Array) => Uint8Array }).zstdDecompressSync;
  if (zstd) out.ZSTD = (input) => zstd(input);
  return out;
}

/** The non-null values of one top-level column, as strings; fails with the columns found when it is absent. */
export async function readParquetStrings(file: string, column: string): Promise<string[]> {
  const buffer = await asyncBufferFromFile(file);
  const metadata = await parquetMetadataAsync(buffer).catch((e: Error) =>
    fail(`${file}: not a readable parquet file (${e.message})`),
  );
  const columns = parquetSchema(metadata).children.map((c) => c.element.name);
  if (!columns.includes(column)) {
    fail(`${file}: no column '${column}' (columns: ${columns.join(', ') || 'none'})`);
  }
  const compressors = nodeDecompressors();
  const rows = await parquetReadObjects({ file: buffer, metadata, columns: [column], compressors }).catch(
    (e: Error) =>
      fail(
        `${file}: cannot read column '${column}' (${e.message}; codecs read: SNAPPY, ${Object.keys(compressors).join(', ')})`,
      ),
  );
  const decoder = new TextDecoder();
  const values: string[] = [];
  for (const row of rows) {
    const value = row[column];
    if (value === null || value === undefined) continue;
    if (typeof value === 'string') values.push(value);
    else if (value instanceof Uint8Array) values.push(decoder.decode(value));
    else fail(`${file}: column '${column}' holds ${typeof value} values, expected strings`);
  }
  return values;
}
