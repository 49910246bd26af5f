// Child side of the kill test in token.test.ts: overwrite one data object with 1, 2, 3... and say
// "wrote N" once each write has returned, until the parent SIGKILLs it.
import { loadState, activateSoftHsmConf } from '../../softhsm/state.ts';
import { openToken } from '../../hsm-adapter/pkcs11-token.ts';

const [stateDir, tokenLabel, label] = process.argv.slice(2) as [string, string, string];
const state = loadState(stateDir);
activateSoftHsmConf(state);
const t = openToken(state.tokenOptions(tokenLabel));
let n = Number(Buffer.from(t.readData(label)).toString());
process.stdout.write('ready\n');
for (;;) {
  n++;
  t.writeData(label, Buffer.from(String(n)));
  process.stdout.write(`wrote ${n}\n`);
}
