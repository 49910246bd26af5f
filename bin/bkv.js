#!/usr/bin/env node
// The `bkv` command. The sources are TypeScript run through tsx, so there is no build step to forget.
import { register } from 'tsx/esm/api';
// `bkv ... | head` closes the pipe early: that is the reader's choice, not an error of ours.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
}
register();
const { main } = await import('../scripts/bkv.ts');
process.exitCode = await main(process.argv.slice(2));
