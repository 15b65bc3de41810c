// Entry of block-workers.ts's threads: worker threads do not inherit the module hooks the CLI and the
// tests run under, so this registers them before loading the TypeScript worker.
import '../loader.mjs';

await import('./block-worker.ts');
