#!/usr/bin/env node
// The `bkv` command. The sources are TypeScript run through tsx, so there is no build step to forget.
import { register } from 'tsx/esm/api';
register();
const { main } = await import('../scripts/bkv.ts');
process.exitCode = await main(process.argv.slice(2));
