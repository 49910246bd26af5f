// The PKCS#11 adapter against real tokens: SoftHSM2, or NSS softoken with BKV_TEST_FLEET=nss (the same
// tests, unchanged; `npm run test:token` runs both).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pkcs11 from 'pkcs11js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { p256 } from '@noble/curves/nist.js';
import { testFleet, type TestFleet } from '../helpers/fleet.ts';
import { KeyLabels } from '../../hsm-adapter/token.ts';
import { openToken, type Pkcs11Token } from '../../hsm-adapter/pkcs11-token.ts';
import { TokenError } from '../../hsm-adapter/errors.ts';
import { BkvError } from '../../protocol/errors.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
let fleet: TestFleet & { on: 'softhsm' | 'nss' };
let east: Pkcs11Token;
let west: Pkcs11Token;
let scratch: string;
const aad = Buffer.from('user 7 / v3 / log 42');

beforeAll(async () => {
  fleet = await testFleet({ replicas: 3 });
  east = fleet.openToken('us-east');
  west = fleet.openToken('us-west');
  scratch = mkdtempSync(join(tmpdir(), 'bkv-token-test-'));
});
afterAll(async () => {
  await fleet?.cleanup();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

function caught(f: () => unknown): TokenError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(TokenError);
    expect(e).toBeInstanceOf(BkvError);
    return e as TokenError;
  }
  throw new Error('expected a TokenError');
}

describe('secret keys stay in the token', () => {
  for (const label of [KeyLabels.recordKey, KeyLabels.oprfSeed, KeyLabels.recordMacKey]) {
    it(`CKA_VALUE of ${label} is refused`, () => {
      const h = east.findObject(label, pkcs11.CKO_SECRET_KEY)!;
      expect(h).toBeDefined();
      expect(() => east.raw.C_GetAttributeValue(east.sessionHandle, h, [{ type: pkcs11.CKA_VALUE }])).toThrow(/CKR_ATTRIBUTE_SENSITIVE/);
      const attrs = east.raw.C_GetAttributeValue(east.sessionHandle, h, [{ type: pkcs11.CKA_SENSITIVE }, { type: pkcs11.CKA_EXTRACTABLE }]);
      expect(attrs[0].value[0]).toBe(1);
      expect(attrs[1].value[0]).toBe(0);
    });

    it(`wrapping ${label} out is refused`, (ctx) => {
      if (fleet.on === 'nss') ctx.skip('NSS softoken 3.87 wraps keys marked non-extractable (docs/tokens.md; doctor warns)');
      const s = east.sessionHandle;
      const lib = east.raw;
      // A session-only wrapping key the attacker controls.
      const wrapper = lib.C_GenerateKey(s, { mechanism: pkcs11.CKM_AES_KEY_GEN }, [
        { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_SECRET_KEY },
        { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_AES },
        { type: pkcs11.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11.CKA_TOKEN, value: false },
        { type: pkcs11.CKA_WRAP, value: true },
      ]);
      try {
        const target = east.findObject(label, pkcs11.CKO_SECRET_KEY)!;
        expect(() => lib.C_WrapKey(s, { mechanism: pkcs11.CKM_AES_KEY_WRAP_PAD }, wrapper, target, Buffer.alloc(256))).toThrow(/CKR_KEY_UNEXTRACTABLE/);
        // Nor can the flag be flipped back on.
        expect(() => lib.C_SetAttributeValue(s, target, [{ type: pkcs11.CKA_EXTRACTABLE, value: true }])).toThrow(/CKR_/);
      } finally {
        lib.C_DestroyObject(s, wrapper);
      }
    });
  }

  it('the identity private key is sensitive and unextractable too', () => {
    const h = east.findObject(KeyLabels.replicaIdentity, pkcs11.CKO_PRIVATE_KEY)!;
    expect(() => east.raw.C_GetAttributeValue(east.sessionHandle, h, [{ type: pkcs11.CKA_VALUE }])).toThrow(/CKR_ATTRIBUTE_SENSITIVE/);
  });
});

describe('seal/open (AES-256-GCM)', () => {
  it('chooses AES-GCM on SoftHSM2 and says so', () => {
    expect(east.sealScheme).toBe('aes-256-gcm');
    expect(east.describe().mechanisms).toContain('CKM_AES_GCM');
    expect(east.describe().label).toBe('us-east');
  });

  it('round-trips messages of many sizes, with a fresh IV each time', () => {
    for (const n of [0, 1, 15, 16, 17, 1000, 65536]) {
      const msg = Buffer.from(east.random(n));
      const a = east.seal(KeyLabels.recordKey, msg, aad);
      const b = east.seal(KeyLabels.recordKey, msg, aad);
      expect(a.length).toBe(12 + n + 16);
      expect(Buffer.from(a.subarray(0, 12)).equals(Buffer.from(b.subarray(0, 12)))).toBe(false);
      expect(Buffer.from(east.open(KeyLabels.recordKey, a, aad)).equals(msg)).toBe(true);
    }
  });

  it('accepts plain Uint8Arrays (not only Buffers) and views into larger buffers', () => {
    const big = new Uint8Array(64).map((_, i) => i);
    const view = big.subarray(10, 30);
    const sealed = east.seal(KeyLabels.recordKey, view, new Uint8Array([1, 2, 3]));
    expect(Array.from(east.open(KeyLabels.recordKey, sealed.slice(), new Uint8Array([1, 2, 3])))).toEqual(Array.from(view));
  });

  it('a wrong AAD, any flipped bit, a truncation or another token\'s key fail to open', () => {
    const msg = Buffer.from('the record');
    const sealed = east.seal(KeyLabels.recordKey, msg, aad);
    expect(caught(() => east.open(KeyLabels.recordKey, sealed, Buffer.from('user 7 / v3 / log 43'))).code).toBe('SEAL_OPEN_FAILED');
    for (let i = 0; i < sealed.length; i++) {
      const bad = Uint8Array.from(sealed);
      bad[i] ^= 0x10;
      expect(caught(() => east.open(KeyLabels.recordKey, bad, aad)).code).toBe('SEAL_OPEN_FAILED');
    }
    expect(caught(() => east.open(KeyLabels.recordKey, sealed.subarray(0, sealed.length - 1), aad)).code).toBe('SEAL_OPEN_FAILED');
    expect(caught(() => east.open(KeyLabels.recordKey, sealed.subarray(0, 20), aad)).code).toBe('SEAL_OPEN_FAILED');
    expect(caught(() => west.open(KeyLabels.recordKey, sealed, aad)).code).toBe('SEAL_OPEN_FAILED');
    // The session is still fine after failed opens.
    expect(Buffer.from(east.open(KeyLabels.recordKey, sealed, aad)).equals(msg)).toBe(true);
  });

  it('refuses an empty AAD on seal and open', () => {
    expect(caught(() => east.seal(KeyLabels.recordKey, Buffer.from('x'), new Uint8Array())).code).toBe('BAD_INPUT');
    const sealed = east.seal(KeyLabels.recordKey, Buffer.from('x'), aad);
    expect(caught(() => east.open(KeyLabels.recordKey, sealed, new Uint8Array())).code).toBe('BAD_INPUT');
  });

  it('names a missing key clearly', () => {
    const e = caught(() => east.seal('no-such-key', Buffer.from('x'), aad));
    expect(e.code).toBe('KEY_NOT_FOUND');
    expect(e.message).toContain("'no-such-key'");
    expect(e.message).toContain("'us-east'");
  });
});

describe('seal fallback (AES-256-CBC-PAD + HMAC-SHA-256)', () => {
  let fb: Pkcs11Token;
  beforeAll(() => {
    fb = fleet.openToken('us-east', { sealScheme: 'aes-256-cbc-hmac-sha256' });
  });

  it('round-trips, with output iv || ciphertext || mac', () => {
    expect(fb.sealScheme).toBe('aes-256-cbc-hmac-sha256');
    expect(fb.describe().sealScheme).toBe('aes-256-cbc-hmac-sha256');
    for (const n of [0, 1, 15, 16, 17, 1000]) {
      const msg = Buffer.from(fb.random(n));
      const sealed = fb.seal(KeyLabels.recordKey, msg, aad);
      expect(sealed.length).toBe(16 + (Math.floor(n / 16) + 1) * 16 + 32);
      expect(Buffer.from(fb.open(KeyLabels.recordKey, sealed, aad)).equals(msg)).toBe(true);
    }
  });

  it('detects tampering anywhere, a wrong AAD, and another token\'s keys', () => {
    const sealed = fb.seal(KeyLabels.recordKey, Buffer.from('fallback record!'), aad);
    for (let i = 0; i < sealed.length; i++) {
      const bad = Uint8Array.from(sealed);
      bad[i] ^= 0x01;
      expect(caught(() => fb.open(KeyLabels.recordKey, bad, aad)).code).toBe('SEAL_OPEN_FAILED');
    }
    expect(caught(() => fb.open(KeyLabels.recordKey, sealed, Buffer.from('other'))).code).toBe('SEAL_OPEN_FAILED');
    // AAD length is bound: moving a byte between AAD and nothing else cannot collide.
    expect(caught(() => fb.open(KeyLabels.recordKey, sealed, Buffer.concat([aad, Buffer.from([0])]))).code).toBe('SEAL_OPEN_FAILED');
    expect(caught(() => fb.open(KeyLabels.recordKey, sealed.subarray(0, sealed.length - 16), aad)).code).toBe('SEAL_OPEN_FAILED');
    const westFb = fleet.openToken('us-west', { sealScheme: 'aes-256-cbc-hmac-sha256' });
    expect(caught(() => westFb.open(KeyLabels.recordKey, sealed, aad)).code).toBe('SEAL_OPEN_FAILED');
  });

  it('is a different construction: a GCM seal does not open as the fallback, nor the reverse', () => {
    const g = east.seal(KeyLabels.recordKey, Buffer.alloc(36, 7), aad);
    const c = fb.seal(KeyLabels.recordKey, Buffer.alloc(20, 7), aad);
    expect(caught(() => fb.open(KeyLabels.recordKey, g, aad)).code).toBe('SEAL_OPEN_FAILED');
    expect(caught(() => east.open(KeyLabels.recordKey, c, aad)).code).toBe('SEAL_OPEN_FAILED');
  });
});

describe('HMAC, signatures, random, data objects', () => {
  it('HMAC-SHA-256/512 with the OPRF seed is equal across tokens; the per-token MAC key differs', () => {
    const data = Buffer.from('oprf input');
    for (const alg of ['sha256', 'sha512'] as const) {
      const a = Buffer.from(east.hmac(KeyLabels.oprfSeed, alg, data));
      expect(a.length).toBe(alg === 'sha256' ? 32 : 64);
      expect(a.equals(Buffer.from(west.hmac(KeyLabels.oprfSeed, alg, data)))).toBe(true);
      expect(a.equals(Buffer.from(east.hmac(KeyLabels.oprfSeed, alg, Buffer.from('other input'))))).toBe(false);
    }
    expect(Buffer.from(east.hmac(KeyLabels.recordMacKey, 'sha256', data)).equals(Buffer.from(west.hmac(KeyLabels.recordMacKey, 'sha256', data)))).toBe(false);
  });

  it('ECDSA P-256 signatures are r||s, verify here and in an independent implementation, and bind key and data', () => {
    const data = Buffer.from('append entry 9, term 3');
    const sig = east.sign(KeyLabels.replicaIdentity, data);
    expect(sig.length).toBe(64);
    const pub = east.publicKey(KeyLabels.replicaIdentity);
    expect(pub.length).toBe(65);
    expect(pub[0]).toBe(4);
    expect(east.verify(pub, data, sig)).toBe(true);
    expect(p256.verify(sig, data, pub, { prehash: true, lowS: false })).toBe(true);
    expect(west.verify(pub, Buffer.from('append entry 9, term 4'), sig)).toBe(false);
    expect(west.verify(west.publicKey(KeyLabels.replicaIdentity), data, sig)).toBe(false);
    const bad = Uint8Array.from(sig);
    bad[10] ^= 1;
    expect(east.verify(pub, data, bad)).toBe(false);
    expect(east.verify(pub, data, sig.subarray(0, 63))).toBe(false);
    expect(caught(() => east.verify(pub.subarray(0, 33), data, sig)).code).toBe('BAD_PUBLIC_KEY');
  });

  it('random bytes come from the token and differ', () => {
    const a = Buffer.from(east.random(32));
    expect(a.length).toBe(32);
    expect(a.equals(Buffer.from(east.random(32)))).toBe(false);
    expect(east.random(0).length).toBe(0);
    expect(caught(() => east.random(-1)).code).toBe('BAD_INPUT');
  });

  it('writeData creates and overwrites a token data object that readData returns', () => {
    east.writeData(KeyLabels.logAnchor, Buffer.from('anchor 1'));
    expect(Buffer.from(east.readData(KeyLabels.logAnchor)).toString()).toBe('anchor 1');
    east.writeData(KeyLabels.logAnchor, Buffer.from('anchor 2, longer'));
    expect(Buffer.from(east.readData(KeyLabels.logAnchor)).toString()).toBe('anchor 2, longer');
    // A second session on the same token sees the token object.
    const again = fleet.openToken('us-east');
    expect(Buffer.from(again.readData(KeyLabels.logAnchor)).toString()).toBe('anchor 2, longer');
    expect(caught(() => west.readData(KeyLabels.logAnchor)).code).toBe('KEY_NOT_FOUND');
  });

  // The host controls the process: it can kill the replica between any two PKCS#11 calls of an
  // overwrite. Were the old object destroyed before the new one exists, a kill there would leave no
  // anchor (a rolled-back disk then passes) and no vote (a second vote in a term). Each call of the
  // overwrite is made to fail once, as a kill at that point would leave the token.
  for (const step of ['C_CreateObject', 'C_DestroyObject', 'C_SetAttributeValue'] as const) {
    it(`an overwrite cut at ${step} leaves the old or the new value, never none`, () => {
      const label = `cut-${step}`;
      east.writeData(label, Buffer.from('old value'));
      const lib = east.raw as unknown as Record<string, (...a: unknown[]) => unknown>;
      const real = lib[step]!;
      let cut = false;
      lib[step] = function (this: unknown, ...a: unknown[]) {
        if (!cut) { cut = true; throw new Error('CKR_DEVICE_REMOVED:50'); }
        return real.apply(this, a);
      };
      try {
        try { east.writeData(label, Buffer.from('new value')); } catch { /* the kill */ }
      } finally {
        lib[step] = real;
      }
      const fresh = fleet.openToken('us-east');
      try {
        expect(['old value', 'new value']).toContain(Buffer.from(fresh.readData(label)).toString());
        fresh.writeData(label, Buffer.from('after'));
        expect(Buffer.from(fresh.readData(label)).toString()).toBe('after');
        expect(Buffer.from(fleet.openToken('us-east').readData(label)).toString()).toBe('after');
      } finally {
        fresh.close();
      }
    });
  }
});

describe('two writers of one data object (two instances of one replica)', () => {
  it('a reader sees the other writer\'s value, and a writer that did not see it is refused', () => {
    const label = 'two-writers';
    const one = fleet.openToken('us-east');
    const two = fleet.openToken('us-east');
    one.writeData(label, Buffer.from('from one'));
    expect(Buffer.from(two.readData(label)).toString()).toBe('from one');
    two.writeData(label, Buffer.from('from two'));
    // One's remembered object is gone: it reads what two wrote.
    expect(Buffer.from(one.readData(label)).toString()).toBe('from two');
    two.writeData(label, Buffer.from('two again'));
    // One last saw generation 2; the object is at 3 now, written by another session: refused, unchanged.
    const e = caught(() => one.writeData(label, Buffer.from('one blind')));
    expect(e.code).toBe('DATA_CHANGED');
    expect(Buffer.from(fleet.openToken('us-east').readData(label)).toString()).toBe('two again');
    // Having read it, one may write again.
    expect(Buffer.from(one.readData(label)).toString()).toBe('two again');
    one.writeData(label, Buffer.from('one, seen'));
    expect(Buffer.from(two.readData(label)).toString()).toBe('one, seen');
  });
});

describe('a process killed while it overwrites a data object', () => {
  // The real thing, not an injected failure: a child process overwrites one object in a loop and is
  // SIGKILLed at a random moment; a fresh session must find the last value whose write returned, or
  // the one after it (created, its predecessor not yet destroyed). Never nothing, never older.
  it('leaves the last written value or its successor, over many kills', async () => {
    const label = 'kill-test';
    east.writeData(label, Buffer.from('0'));
    for (let round = 0; round < 12; round++) {
      const child = spawn(process.execPath, ['bin/run.js', 'test/hsm-adapter/overwrite-worker.ts', fleet.stateDir, 'us-east', label], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let last = -1;
      let stderr = '';
      child.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
      const lines = createInterface({ input: child.stdout! });
      // Killed only after its login: SoftHSM2 rewrites its token file at C_Login, and a kill there is another matter.
      await new Promise<void>((resolve, reject) => {
        lines.on('line', (l) => {
          if (l === 'ready') setTimeout(() => child.kill('SIGKILL'), 20 + Math.random() * 120);
          else if (l.startsWith('wrote ')) last = Number(l.slice(6));
        });
        child.once('exit', (code, signal) => (signal === 'SIGKILL' ? resolve() : reject(new Error(`worker exited ${code}: ${stderr}`))));
      });
      const fresh = fleet.openToken('us-east');
      const found = Number(Buffer.from(fresh.readData(label)).toString());
      fresh.close();
      expect(found === last || found === last + 1 || (last === -1 && found >= 0)).toBe(true);
      // A session that read the object before the child rewrote it never sees anything older than the
      // last value whose write returned. It may still see that one when the child was killed between
      // creating the successor and destroying it (its cached handle is still there): then its own next
      // write is refused, as an instance's that another one wrote behind its back.
      const mine = Number(Buffer.from(east.readData(label)).toString());
      expect(mine === found || (mine === last && found === last + 1)).toBe(true);
      if (mine !== found) expect(() => east.writeData(label, Buffer.from('stale'))).toThrow(expect.objectContaining({ code: 'DATA_CHANGED' }));
    }
  }, 120_000);
});

describe('opening tokens', () => {
  it('opens by PKCS#11 URI with a pin-source file', () => {
    const pinFile = join(scratch, 'pin');
    writeFileSync(pinFile, fleet.state.pinFor('us-west') + '\n', { mode: 0o600 });
    const t = openToken({ modulePath: fleet.state.modulePath, token: `pkcs11:token=us-west;object=record-key?pin-source=${pinFile}` });
    try {
      expect(t.label).toBe('us-west');
      const sealed = t.seal(KeyLabels.recordKey, Buffer.from('via uri'), aad);
      expect(Buffer.from(west.open(KeyLabels.recordKey, sealed, aad)).toString()).toBe('via uri');
    } finally {
      t.close();
    }
    // NSS softoken gives every token serial 0000000000000000: a serial names no single token there.
    if (fleet.on === 'nss') return;
    const serial = west.describe().serial;
    const t2 = openToken({ modulePath: fleet.state.modulePath, token: `pkcs11:serial=${serial}`, pin: fleet.state.pinFor('us-west') });
    expect(t2.label).toBe('us-west');
    t2.close();
  });

  it('an unknown label names what is there', () => {
    const e = caught(() => openToken({ modulePath: fleet.state.modulePath, token: 'eu-nowhere', pin: '1234' }));
    expect(e.code).toBe('TOKEN_NOT_FOUND');
    expect(e.message).toContain('eu-nowhere');
    expect(e.message).toContain("'us-east'");
  });

  it('a wrong PIN is PIN_INCORRECT and the PIN is in no message', () => {
    const wrong = 'wrong-pin-8c1f2e';
    // eu-west: nobody in this process is logged in, so the token itself checks the PIN.
    const e = caught(() => openToken({ modulePath: fleet.state.modulePath, token: 'eu-west', pin: wrong }));
    expect(e.code).toBe('PIN_INCORRECT');
    expect(e.ckr).toBe('CKR_PIN_INCORRECT');
    expect(e.operation).toBe('C_Login');
    // us-east: already logged in (PKCS#11 login is per process), so the module skips the check;
    // the adapter still refuses a PIN that differs from the one this thread logged in with.
    const e2 = caught(() => openToken({ modulePath: fleet.state.modulePath, token: 'us-east', pin: wrong }));
    expect(e2.code).toBe('PIN_INCORRECT');
    for (const err of [e, e2]) {
      const everything = `${err.message} ${err.stack} ${JSON.stringify(err)} ${String(err.cause ?? '')}`;
      expect(everything).not.toContain(wrong);
      expect(everything).not.toContain(fleet.state.pinFor('us-east'));
      expect(everything).not.toContain(fleet.state.pinFor('eu-west'));
    }
    // The right PIN still works on both.
    openToken({ modulePath: fleet.state.modulePath, token: 'eu-west', pin: fleet.state.pinFor('eu-west') }).close();
  });

  it('no PIN at all is a clear error', () => {
    expect(caught(() => openToken({ modulePath: fleet.state.modulePath, token: 'us-east' })).code).toBe('PIN_MISSING');
  });

  it('a missing module is MODULE_NOT_FOUND; a file that is no module is MODULE_LOAD_FAILED', () => {
    expect(caught(() => openToken({ modulePath: '/nonexistent/libpkcs11.so', token: 'us-east', pin: 'x' })).code).toBe('MODULE_NOT_FOUND');
    const notLib = join(scratch, 'not-a-module.so');
    writeFileSync(notLib, 'hello');
    expect(caught(() => openToken({ modulePath: notLib, token: 'us-east', pin: 'x' })).code).toBe('MODULE_LOAD_FAILED');
  });

  it('refuses a PIN inside the URI', () => {
    const e = caught(() => openToken({ modulePath: fleet.state.modulePath, token: 'pkcs11:token=us-east?pin-value=123456' }));
    expect(e.code).toBe('BAD_TOKEN_URI');
    expect(e.message).not.toContain('123456');
  });

  it('a closed token refuses to work; the session can be replaced after it is lost', () => {
    const t = fleet.openToken('us-east');
    const sealed = t.seal(KeyLabels.recordKey, Buffer.from('before'), aad);
    // Pull the session out from under the adapter, as a token reset would.
    t.raw.C_CloseSession(t.sessionHandle);
    const e = caught(() => t.open(KeyLabels.recordKey, sealed, aad));
    expect(e.code).toBe('TOKEN_SESSION_LOST');
    expect(e.ckr).toBe('CKR_SESSION_HANDLE_INVALID');
    expect(e.operation).toBe('open');
    // The next call opens a new session and logs in again.
    expect(Buffer.from(t.open(KeyLabels.recordKey, sealed, aad)).toString()).toBe('before');
    t.close();
    expect(() => t.seal(KeyLabels.recordKey, Buffer.from('x'), aad)).toThrow();
  });
});
