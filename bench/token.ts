// `npm run bench:token`: the adapter's seal/open/HMAC throughput next to the same operations done
// with raw pkcs11js calls on the same token, in the same run, interleaved call by call.
// Target: adapter overhead under 15%.
import pkcs11 from 'pkcs11js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { provision } from '../softhsm/provision.ts';
import { loadState, activateSoftHsmConf } from '../softhsm/state.ts';
import { openToken, finalizeModule } from '../hsm-adapter/pkcs11-token.ts';
import { KeyLabels } from '../hsm-adapter/token.ts';

const BLOCK = Number(process.env.BENCH_BLOCK ?? 3000);
const PAIRS = Number(process.env.BENCH_PAIRS ?? 20000);
const PAYLOAD = 256;

const stateDir = mkdtempSync(join(tmpdir(), 'bkv-bench-token-'));
try {
  await provision({ stateDir, replicas: 1 });
  const state = loadState(stateDir);
  activateSoftHsmConf(state);
  const label = state.replicas[0].tokenLabel;
  const t = openToken({ ...state.tokenOptions(label), sealScheme: 'auto' });
  const fb = openToken({ ...state.tokenOptions(label), sealScheme: 'aes-256-cbc-hmac-sha256' });

  const lib = t.raw;
  // The raw side gets its own session and handles, looked up once: the best a caller could do.
  const slot = t.slot;
  const s = lib.C_OpenSession(slot, pkcs11.CKF_SERIAL_SESSION);
  const find = (l: string) => {
    lib.C_FindObjectsInit(s, [{ type: pkcs11.CKA_CLASS, value: pkcs11.CKO_SECRET_KEY }, { type: pkcs11.CKA_LABEL, value: l }]);
    const h = lib.C_FindObjects(s, 1)[0];
    lib.C_FindObjectsFinal(s);
    return h;
  };
  const recordKey = find(KeyLabels.recordKey);
  const oprfSeed = find(KeyLabels.oprfSeed);

  const pt = Buffer.from(t.random(PAYLOAD));
  const aad = Buffer.from('user 0123456789abcdef / v1 / log 42');
  const msg64 = Buffer.from(t.random(64));
  const sealedByAdapter = Buffer.from(t.seal(KeyLabels.recordKey, pt, aad));

  const raw = {
    seal(): Buffer {
      const out = Buffer.allocUnsafe(12 + PAYLOAD + 16);
      const iv = out.subarray(0, 12);
      lib.C_GenerateRandom(s, iv);
      lib.C_EncryptInit(s, { mechanism: pkcs11.CKM_AES_GCM, parameter: { type: pkcs11.CK_PARAMS_AES_GCM_v240, iv, ivBits: 96, aad, tagBits: 128 } as pkcs11.GcmParams }, recordKey);
      lib.C_Encrypt(s, pt, out.subarray(12));
      return out;
    },
    open(): Buffer {
      lib.C_DecryptInit(s, { mechanism: pkcs11.CKM_AES_GCM, parameter: { type: pkcs11.CK_PARAMS_AES_GCM_v240, iv: sealedByAdapter.subarray(0, 12), ivBits: 96, aad, tagBits: 128 } as pkcs11.GcmParams }, recordKey);
      return lib.C_Decrypt(s, sealedByAdapter.subarray(12), Buffer.allocUnsafe(sealedByAdapter.length - 12));
    },
    hmac256(): Buffer {
      lib.C_SignInit(s, { mechanism: pkcs11.CKM_SHA256_HMAC }, oprfSeed);
      return lib.C_Sign(s, msg64, Buffer.allocUnsafe(32));
    },
    hmac512(): Buffer {
      lib.C_SignInit(s, { mechanism: pkcs11.CKM_SHA512_HMAC }, oprfSeed);
      return lib.C_Sign(s, msg64, Buffer.allocUnsafe(64));
    },
  };
  const adapter = {
    seal: () => t.seal(KeyLabels.recordKey, pt, aad),
    open: () => t.open(KeyLabels.recordKey, sealedByAdapter, aad),
    hmac256: () => t.hmac(KeyLabels.oprfSeed, 'sha256', msg64),
    hmac512: () => t.hmac(KeyLabels.oprfSeed, 'sha512', msg64),
  };

  // Both sides must compute the same thing before their speed means anything.
  if (!Buffer.from(adapter.hmac256()).equals(raw.hmac256())) throw new Error('adapter and raw HMAC differ');
  if (!Buffer.from(adapter.open()).equals(raw.open())) throw new Error('adapter and raw open differ');
  if (!Buffer.from(t.open(KeyLabels.recordKey, raw.seal(), aad)).equals(pt)) throw new Error('raw seal does not open');

  const block = (f: () => unknown): number => {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < BLOCK; i++) f();
    return (BLOCK * 1e9) / Number(process.hrtime.bigint() - t0);
  };
  const median = (xs: ArrayLike<number>) => Float64Array.from(xs).sort()[Math.floor(xs.length / 2)];

  // Adapter and raw calls alternate one by one (order flipped every pair), each timed on its own.
  // The median latency shrugs off preemption by other processes, which on a busy 2-core machine
  // swamps any block-level comparison; the block rates below are reported for scale.
  const results: Record<string, { adapterOpsPerSec: number; rawOpsPerSec: number; adapterMedianUs: number; rawMedianUs: number; overheadPct: number }> = {};
  for (const op of Object.keys(raw) as (keyof typeof raw)[]) {
    const fa = adapter[op];
    const fr = raw[op];
    for (let i = 0; i < 500; i++) {
      fa();
      fr();
    }
    const ta = new Float64Array(PAIRS);
    const tr = new Float64Array(PAIRS);
    for (let i = 0; i < PAIRS; i++) {
      if (i & 1) {
        const t0 = performance.now();
        fa();
        const t1 = performance.now();
        fr();
        ta[i] = t1 - t0;
        tr[i] = performance.now() - t1;
      } else {
        const t0 = performance.now();
        fr();
        const t1 = performance.now();
        fa();
        tr[i] = t1 - t0;
        ta[i] = performance.now() - t1;
      }
    }
    const ma = median(ta);
    const mr = median(tr);
    results[op] = {
      adapterOpsPerSec: Math.round(block(fa)),
      rawOpsPerSec: Math.round(block(fr)),
      adapterMedianUs: Number((ma * 1000).toFixed(2)),
      rawMedianUs: Number((mr * 1000).toFixed(2)),
      overheadPct: Number(((ma / mr - 1) * 100).toFixed(1)),
    };
  }

  const fallback = {
    seal: Math.round(median(Array.from({ length: 3 }, () => block(() => fb.seal(KeyLabels.recordKey, pt, aad))))),
    open: (() => {
      const sealed = fb.seal(KeyLabels.recordKey, pt, aad);
      return Math.round(median(Array.from({ length: 3 }, () => block(() => fb.open(KeyLabels.recordKey, sealed, aad)))));
    })(),
  };

  lib.C_CloseSession(s);
  t.close();
  fb.close();
  const maxOverheadPct = Math.max(...Object.values(results).map((x) => x.overheadPct));
  console.log(
    JSON.stringify(
      {
        bench: 'token',
        token: { module: state.modulePath, label, sealScheme: t.sealScheme },
        machine: { cpus: cpus().length, node: process.version },
        method: { pairs: PAIRS, blockOps: BLOCK, payloadBytes: PAYLOAD, aadBytes: aad.length, hmacInputBytes: 64, statistic: 'overheadPct = median adapter latency / median raw latency - 1, calls interleaved one by one; ops/s from one block each, for scale' },
        results,
        fallbackSealOpsPerSec: fallback,
        maxOverheadPct,
        targetOverheadPct: 15,
        withinTarget: maxOverheadPct < 15,
      },
      null,
      2,
    ),
  );
} finally {
  finalizeModule();
  rmSync(stateDir, { recursive: true, force: true });
}
