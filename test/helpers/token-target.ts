// The tokens the conformance suite runs on. By default SoftHSM2 (a fresh one-token fleet) and NSS
// softoken (fresh databases, when libnss3 is installed). With BKV_TEST_MODULE set, only that module:
//   BKV_TEST_MODULE=PATH  BKV_TEST_MODULE_ARGS=STRING  BKV_TEST_TOKEN=LABEL|URI  BKV_TEST_PIN_FILE=F
// (or `npm run test:token -- --module PATH ...`). Such a token is adopted as bkv adopts one: the
// data store is probed, and the per-token keys and (test) fleet secrets are created where missing,
// so point it at a token meant for testing. PINs are read from files and never printed.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { provisionTestFleet, type TestFleet } from './fleet.ts';
import { makeNssTokens, nssMissing, type NssTokens } from './nss.ts';
import { openToken, type DataStore, type OpenTokenOptions, type Pkcs11Token } from '../../hsm-adapter/pkcs11-token.ts';
import { chooseDataStore, ensurePerTokenKeys, fleetSecretPresence, importFleetSecrets } from '../../softhsm/keys.ts';

export interface TokenTarget {
  name: string;
  /** Why this target is skipped, or undefined. */
  skip?: string;
  /** Set up before use (beforeAll); returns the options that open the token. */
  setUp(): Promise<void>;
  options(): OpenTokenOptions;
  tearDown(): Promise<void>;
}

function adopt(opts: OpenTokenOptions): DataStore {
  const t = openToken({ ...opts, requireMechanisms: false });
  try {
    const choice = chooseDataStore(t.probeDataStores());
    if (!choice.store) throw new Error(`the token under test has no data store: ${choice.reason}`);
    t.useDataStore(choice.store);
    ensurePerTokenKeys(t);
    const have = fleetSecretPresence(t);
    if (!have.oprfSeed || !have.fleetAke) {
      const oprf = randomBytes(64);
      const ake = randomBytes(32);
      try {
        importFleetSecrets(t, oprf, ake, have);
      } finally {
        oprf.fill(0);
        ake.fill(0);
      }
    }
    return choice.store;
  } finally {
    t.close();
  }
}

export function tokenTargets(): TokenTarget[] {
  const env = process.env;
  if (env.BKV_TEST_MODULE) {
    let opts: OpenTokenOptions | undefined;
    const missing = !env.BKV_TEST_TOKEN ? 'BKV_TEST_TOKEN is not set' : !env.BKV_TEST_PIN_FILE ? 'BKV_TEST_PIN_FILE is not set' : undefined;
    return [{
      name: `module ${env.BKV_TEST_MODULE}`,
      skip: missing,
      async setUp() {
        const pin = readFileSync(env.BKV_TEST_PIN_FILE!, 'utf8').replace(/\r?\n$/, '');
        const base: OpenTokenOptions = { modulePath: env.BKV_TEST_MODULE, token: env.BKV_TEST_TOKEN!, pin, ...(env.BKV_TEST_MODULE_ARGS ? { moduleArgs: env.BKV_TEST_MODULE_ARGS } : {}) };
        opts = { ...base, dataStore: adopt(base) };
      },
      options: () => opts!,
      async tearDown() {},
    }];
  }
  let fleet: TestFleet | undefined;
  let nss: NssTokens | undefined;
  let nssOpts: OpenTokenOptions | undefined;
  return [
    {
      name: 'SoftHSM2',
      async setUp() {
        fleet = await provisionTestFleet({ replicas: 1 });
      },
      options: () => fleet!.state.tokenOptions('us-east'),
      async tearDown() {
        await fleet?.cleanup();
      },
    },
    {
      name: 'NSS softoken',
      skip: nssMissing,
      async setUp() {
        nss = makeNssTokens(['nss-conformance']);
        const base: OpenTokenOptions = { modulePath: nss.modulePath, moduleArgs: nss.moduleArgs, token: 'nss-conformance', pin: nss.pins['nss-conformance'] };
        nssOpts = { ...base, dataStore: adopt(base) };
      },
      options: () => nssOpts!,
      async tearDown() {
        nss?.cleanup();
      },
    },
  ];
}

export type { Pkcs11Token };
