// `npm run test:token -- --module PATH [--module-args S] --token LABEL|URI --pin-file F`: the token
// conformance suite (test/hsm-adapter/conformance.test.ts) and the least-privilege checks against one module. Without --module it
// runs those and test/hsm-adapter/token.test.ts on SoftHSM2 and NSS softoken. The flags become BKV_TEST_* for the test process; the PIN stays
// in its file. It adopts the token as bkv would (creates bkv's objects where missing): use a test token.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const usage = 'usage: npm run test:token -- [--module PATH [--module-args S] --token LABEL|URI --pin-file F]';
let values: Record<string, string | undefined>;
try {
  ({ values } = parseArgs({
    options: { module: { type: 'string' }, 'module-args': { type: 'string' }, token: { type: 'string' }, 'pin-file': { type: 'string' } },
    strict: true,
  }));
} catch (e) {
  console.error(`${(e as Error).message}\n${usage}`);
  process.exit(2);
}
if (!values.module && (values.token || values['pin-file'] || values['module-args'])) {
  console.error(`--token, --pin-file and --module-args go with --module\n${usage}`);
  process.exit(2);
}
if (values.module && (!values.token || !values['pin-file'])) {
  console.error(`--module needs --token and --pin-file\n${usage}`);
  process.exit(2);
}
const env = { ...process.env };
if (values.module) {
  env.BKV_TEST_MODULE = values.module;
  env.BKV_TEST_TOKEN = values.token;
  env.BKV_TEST_PIN_FILE = values['pin-file'];
  if (values['module-args']) env.BKV_TEST_MODULE_ARGS = values['module-args'];
}
const root = fileURLToPath(new URL('../', import.meta.url));
const vitest = (files: string[], extra: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, [`${root}node_modules/vitest/vitest.mjs`, 'run', ...files], { cwd: root, env: { ...env, ...extra }, stdio: 'inherit' }).status ?? 1;
const suite = ['test/hsm-adapter/conformance.test.ts', 'test/softhsm/least-privilege.test.ts'];
// Without --module: also the adapter's own suite (three tokens of one fleet), on SoftHSM2 and on NSS.
const status = values.module
  ? vitest(suite)
  : Math.max(vitest([...suite, 'test/hsm-adapter/token.test.ts']), vitest(['test/hsm-adapter/token.test.ts'], { BKV_TEST_FLEET: 'nss' }));
process.exit(status);
