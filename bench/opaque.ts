// npm run bench:opaque — the vault's KE2 generation (serverStartLogin) per second, for each group
// backend (native addon, libsodium wasm, noble), against @serenity-kit/opaque's server.startLogin
// (opaque-ke in WebAssembly, same ciphersuite ristretto255-SHA512 with 3DH), measured side by side
// in one run on one thread. The headline ratio is the vault's default backend (native when the
// addon loads, else libsodium) over serenity. With a provisioned test fleet available, also KE2/s
// with the token-backed secrets. Prints one JSON document on stdout.
import { existsSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import * as serenity from '@serenity-kit/opaque';
import sodium from 'libsodium-wrappers-sumo';
import {
  backendStatus,
  createOpaque,
  identityKsf,
  ready,
  softwareServerSecretsFromSeed,
  tokenServerSecrets,
  type BackendId,
  type Opaque,
  type ServerSecrets,
} from '../protocol/opaque/index.ts';
import { nativeRistretto255 } from '../protocol/opaque/group.ts';
import { measureRecoveryCost, measureVaultProcess } from './recovery-cost.ts';

const DURATION_MS = Number(process.env.BENCH_MS ?? 12000);
const SLICE_MS = 250;

interface Tally {
  ops: number;
  ms: number;
}

function slice(fn: () => void, ms: number, t: Tally): void {
  let n = 0;
  const t0 = performance.now();
  let now = t0;
  while (now - t0 < ms) {
    for (let i = 0; i < 8; i++) fn();
    n += 8;
    now = performance.now();
  }
  t.ops += n;
  t.ms += now - t0;
}

/**
 * Subjects run in short alternating slices for DURATION_MS each, after a warm-up, so load from
 * anything else on the machine hits subject and baseline alike. Returns ops/s per subject.
 */
function race(subjects: Record<string, () => void>, durationMs = DURATION_MS): Record<string, number> {
  const names = Object.keys(subjects);
  const warm: Tally = { ops: 0, ms: 0 };
  for (const n of names) slice(subjects[n]!, 300, warm);
  const tallies = Object.fromEntries(names.map((n) => [n, { ops: 0, ms: 0 } as Tally]));
  for (let done = 0; done < durationMs; done += SLICE_MS) {
    for (const n of names) slice(subjects[n]!, SLICE_MS, tallies[n]!);
  }
  return Object.fromEntries(names.map((n) => [n, (tallies[n]!.ops * 1000) / tallies[n]!.ms]));
}

const enc = new TextEncoder();
const password = enc.encode('correct horse battery staple');
const credId = enc.encode('bench-user');
const oprfSeed = new Uint8Array(64).fill(7);
const akeSeed = new Uint8Array(32).fill(9);

async function vaultSubject(backend: BackendId) {
  const op = await createOpaque({ suite: 'ristretto255-SHA512', backend, ksf: identityKsf });
  const secrets = softwareServerSecretsFromSeed('ristretto255-SHA512', oprfSeed, akeSeed);
  const reg = op.clientStartRegistration(password);
  const { record } = op.clientFinishRegistration(reg.state, op.serverRegistrationResponse(secrets, reg.request, credId));
  const { ke1 } = op.clientStartLogin(password);
  return { op, secrets, record, ke1 };
}

function ke2Loop(op: Opaque, secrets: ServerSecrets, record: Uint8Array | null, ke1: Uint8Array) {
  return () => {
    op.serverStartLogin(secrets, record, ke1, credId);
  };
}

await serenity.ready;
const serverSetup = serenity.server.createSetup();
const sReg = serenity.client.startRegistration({ password: 'correct horse battery staple' });
const { registrationResponse } = serenity.server.createRegistrationResponse({ serverSetup, userIdentifier: 'bench-user', registrationRequest: sReg.registrationRequest });
const { registrationRecord } = serenity.client.finishRegistration({
  clientRegistrationState: sReg.clientRegistrationState,
  registrationResponse,
  password: 'correct horse battery staple',
  keyStretching: { 'argon2id-custom': { iterations: 1, memory: 64, parallelism: 1 } },
});
const { startLoginRequest } = serenity.client.startLogin({ password: 'correct horse battery staple' });
const serenityLoop = () => {
  serenity.server.startLogin({ serverSetup, registrationRecord, startLoginRequest, userIdentifier: 'bench-user' });
};

await ready();
const status = backendStatus();
const defaultBackend = status.defaultBackend;
const sodiumS = await vaultSubject('libsodium');
const nobleS = await vaultSubject('noble');
const nativeS = status.native.loaded ? await vaultSubject('native') : null;
const defaultS = defaultBackend === 'native' && nativeS ? nativeS : sodiumS;

// The group-math floor of one KE2 on libsodium: 4 variable-base multiplications (OPRF evaluation,
// 3DH x3) and 1 base-point multiplication (ephemeral key), nothing else.
await sodium.ready;
const fs = sodium.crypto_core_ristretto255_scalar_random();
const fp = sodium.crypto_scalarmult_ristretto255_base(fs);
const floorLoop = () => {
  for (let i = 0; i < 4; i++) sodium.crypto_scalarmult_ristretto255(fs, fp);
  sodium.crypto_scalarmult_ristretto255_base(fs);
};

// The same floor on the native addon, through the group interface (its checks and copies included).
const nativeFloorLoop = () => {
  for (let i = 0; i < 4; i++) nativeRistretto255.scalarMult(fs, fp);
  nativeRistretto255.scalarMultBase(fs);
};

const main = race({
  serenity: serenityLoop,
  ...(nativeS
    ? {
        native: ke2Loop(nativeS.op, nativeS.secrets, nativeS.record, nativeS.ke1),
        nativeUnknownUser: ke2Loop(nativeS.op, nativeS.secrets, null, nativeS.ke1),
        nativeMathFloor: nativeFloorLoop,
      }
    : {}),
  libsodium: ke2Loop(sodiumS.op, sodiumS.secrets, sodiumS.record, sodiumS.ke1),
  libsodiumUnknownUser: ke2Loop(sodiumS.op, sodiumS.secrets, null, sodiumS.ke1),
  libsodiumMathFloor: floorLoop,
});
const noble = race({ noble: ke2Loop(nobleS.op, nobleS.secrets, nobleS.record, nobleS.ke1) }, 2000).noble!;
const round = (x: number) => Math.round(x);

// Token-backed secrets, when the test-fleet helper is there and SoftHSM works.
let token: Record<string, unknown> = { available: false };
let recoveryCost: Record<string, unknown> = { available: false };
const fleetPath = new URL('../test/helpers/fleet.ts', import.meta.url);
if (existsSync(fleetPath)) {
  try {
    const { provisionTestFleet } = (await import(fleetPath.href)) as {
      provisionTestFleet: (o: { replicas: number }) => Promise<{
        stateDir: string;
        openToken(label: string): import('../hsm-adapter/token.ts').Token;
        replicas: { name: string; tokenLabel: string }[];
        cleanup(): Promise<void> | void;
      }>;
    };
    const fleet = await provisionTestFleet({ replicas: 1 });
    try {
      const tk = fleet.openToken(fleet.replicas[0]!.tokenLabel);
      {
        const secrets = tokenServerSecrets(tk, 'ristretto255-SHA512');
        const op = defaultS.op;
        const reg = op.clientStartRegistration(password);
        const { record } = op.clientFinishRegistration(reg.state, op.serverRegistrationResponse(secrets, reg.request, credId));
        const r = race({ software: ke2Loop(op, defaultS.secrets, record, defaultS.ke1), token: ke2Loop(op, secrets, record, defaultS.ke1) }, 4000);
        const hmacPerSec = race({ h: () => void secrets.oprfExpand(credId) }, 1000).h!;
        token = { available: true, backend: defaultBackend, ke2PerSecToken: round(r.token!), ke2PerSecSoftwareSameRace: round(r.software!), tokenOprfExpandPerSec: round(hmacPerSec) };
        // The vault's whole work per recovery on this token, with and without the device-vault session.
        const cost = await measureRecoveryCost(tk, Number(process.env.BENCH_RECOVERY_MS ?? 6000));
        // The whole vault process per recovery (with the channel), and the same less the channel's
        // measured firmware cost: the channel's share of what a vault spends per recovery.
        const proc = await measureVaultProcess(fleet.stateDir, Number(process.env.BENCH_RECOVERY_MS ?? 6000));
        const channelMs = cost.msPerRecovery.session - cost.msPerRecovery.plain;
        const withoutMs = proc.cpuMsPerRecovery - channelMs;
        const share = Number((channelMs / withoutMs).toFixed(3));
        recoveryCost = {
          firmware: cost,
          vaultProcess: { ...proc, cpuMsPerRecoveryWithoutChannel: Math.round(withoutMs * 1000) / 1000, channelMs: Math.round(channelMs * 1000) / 1000, channelShare: share },
          target: 0.1,
          meetsTarget: share <= 0.1,
          meetsTargetOnFirmwareAlone: cost.channelOverhead <= 0.1,
        };
      }
    } finally {
      await fleet.cleanup();
    }
  } catch (e) {
    token = { available: false, error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) };
  }
}

const libsodium = main.libsodium!;
const serenityOps = main.serenity!;
const headline = defaultBackend === 'native' ? main.native! : libsodium;
const ratio = (x: number | undefined) => (x === undefined ? null : Number((x / serenityOps).toFixed(2)));
console.log(
  JSON.stringify(
    {
      bench: 'opaque',
      what: 'vault KE2 generation (serverStartLogin), ristretto255-SHA512, one thread, software secrets',
      machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version, loadavg1m: loadavg()[0] },
      method: `warm-up, then ${DURATION_MS} ms per subject in alternating ${SLICE_MS} ms slices`,
      // The vault's default backend: what serverStartLogin uses in production.
      backend: defaultBackend,
      ...(status.native.loaded ? { nativeSodiumVersion: status.native.sodiumVersion } : { nativeUnavailable: status.native.reason }),
      ke2PerSec: {
        ...(nativeS ? { native: round(main.native!), nativeUnknownUser: round(main.nativeUnknownUser!) } : {}),
        libsodium: round(libsodium),
        libsodiumUnknownUser: round(main.libsodiumUnknownUser!),
        noble: round(noble),
      },
      mathFloorPerSec: {
        ...(nativeS ? { native: round(main.nativeMathFloor!) } : {}),
        libsodium: round(main.libsodiumMathFloor!),
      },
      baseline: { serenityStartLoginPerSec: round(serenityOps) },
      ratioOverSerenity: {
        ...(nativeS ? { native: ratio(main.native), nativeMathFloor: ratio(main.nativeMathFloor) } : {}),
        libsodium: ratio(libsodium),
        libsodiumMathFloor: ratio(main.libsodiumMathFloor),
        noble: ratio(noble),
      },
      ratioDefaultOverSerenity: ratio(headline),
      target: 2,
      meetsTarget: headline / serenityOps >= 2,
      token,
      recoveryCost: {
        what: 'vault work per whole recovery (RecoverStart, commit, RecoverFinish, commit, K released) on a SoftHSM2 token: bare firmware vs behind the Noise NK session gate, alternating slices',
        ...recoveryCost,
      },
    },
    null,
    2,
  ),
);
