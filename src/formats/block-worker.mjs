// Entry of block-workers.ts's threads: worker threads do not inherit the tsx loader the CLI and the
// tests run under, so this registers it before loading the TypeScript worker.
import { register } from 'tsx/esm/api';

register();
await import('./block-worker.ts');
