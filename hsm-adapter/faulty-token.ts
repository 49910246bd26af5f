// A Token that wraps a real one and, on a schedule fixed by a seed, fails chosen calls the way a
// sick HSM does (device error, lost session, token pulled) or makes them slow. The schedule depends
// only on the seed and the call index, so a chaos run replays exactly. The real token still does
// the work of every call that is not failed.
import { TokenError } from './errors.ts';
import type { HmacAlg, Token, TokenDescription } from './token.ts';

export type InjectedFault = 'CKR_DEVICE_ERROR' | 'CKR_SESSION_HANDLE_INVALID' | 'CKR_TOKEN_NOT_PRESENT';
export type TokenOp = 'seal' | 'open' | 'hmac' | 'sign' | 'verify' | 'publicKey' | 'readData' | 'writeData' | 'random';

const faultCode: Record<InjectedFault, string> = {
  CKR_DEVICE_ERROR: 'TOKEN_DEVICE_ERROR',
  CKR_SESSION_HANDLE_INVALID: 'TOKEN_SESSION_LOST',
  CKR_TOKEN_NOT_PRESENT: 'TOKEN_NOT_PRESENT',
};
const allFaults: InjectedFault[] = ['CKR_DEVICE_ERROR', 'CKR_SESSION_HANDLE_INVALID', 'CKR_TOKEN_NOT_PRESENT'];

export interface FaultPlan {
  /** Seeds the schedule. Same seed, same sequence of calls -> same faults and delays. */
  seed: number;
  /** Chance (0..1) that an eligible call fails. Default 0. */
  failureRate?: number;
  /** Faults to draw from. Default: all three. */
  faults?: InjectedFault[];
  /** Operations that may fail or be delayed. Default: all but verify (which never reaches the token). */
  ops?: TokenOp[];
  /** Chance (0..1) that an eligible call is delayed, and the delay range in ms. */
  latencyRate?: number;
  latencyMs?: [min: number, max: number];
  /** Fail exactly these calls (0-based index over all calls through this wrapper). */
  failCalls?: { call: number; fault: InjectedFault }[];
  /** Once CKR_TOKEN_NOT_PRESENT is injected, every call fails with it until reinsert(). Default true. */
  stickyRemoval?: boolean;
  /** How to wait: default blocks the thread (Atomics.wait); a simulator passes its virtual clock. */
  sleep?: (ms: number) => void;
}

export interface FaultEvent {
  call: number;
  op: TokenOp;
  fault?: InjectedFault;
  delayMs?: number;
}

/** mulberry32: small, fast, and good enough to pick faults; not for secrets. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const blockingSleep = (ms: number) => {
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
};

export class FaultyToken implements Token {
  readonly label: string;
  /** Every call that was failed or delayed, in order. */
  readonly events: FaultEvent[] = [];
  private calls = 0;
  private removed = false;
  private readonly rand: () => number;
  private readonly ops: ReadonlySet<TokenOp>;
  private readonly failAt: Map<number, InjectedFault>;
  private readonly sleep: (ms: number) => void;

  constructor(
    readonly inner: Token,
    private readonly plan: FaultPlan,
  ) {
    this.label = inner.label;
    this.rand = seededRandom(plan.seed);
    this.ops = new Set(plan.ops ?? ['seal', 'open', 'hmac', 'sign', 'publicKey', 'readData', 'writeData', 'random']);
    this.failAt = new Map((plan.failCalls ?? []).map((f) => [f.call, f.fault]));
    this.sleep = plan.sleep ?? blockingSleep;
    for (const r of [plan.failureRate ?? 0, plan.latencyRate ?? 0]) {
      if (!(r >= 0 && r <= 1)) throw new TokenError('BAD_INPUT', `fault rates must lie in [0, 1] (got ${r})`, { operation: 'fault-plan' });
    }
  }

  /** The token is back: calls stop failing with CKR_TOKEN_NOT_PRESENT. */
  reinsert(): void {
    this.removed = false;
  }

  get callCount(): number {
    return this.calls;
  }

  private before(op: TokenOp): void {
    const call = this.calls++;
    // Three draws per call whatever happens, so one call's outcome never shifts the next call's.
    const rFail = this.rand();
    const rWhich = this.rand();
    const rDelay = this.rand();
    let fault = this.failAt.get(call);
    let delayMs: number | undefined;
    if (this.ops.has(op)) {
      if (this.removed) fault = 'CKR_TOKEN_NOT_PRESENT';
      if (!fault && rFail < (this.plan.failureRate ?? 0)) {
        const choices = this.plan.faults ?? allFaults;
        fault = choices[Math.floor(rWhich * choices.length)];
      }
      if (rDelay < (this.plan.latencyRate ?? 0)) {
        const [lo, hi] = this.plan.latencyMs ?? [1, 20];
        // rDelay / latencyRate is uniform in [0, 1) given that the call is delayed.
        delayMs = lo + ((rDelay / (this.plan.latencyRate ?? 1)) * (hi - lo));
      }
    }
    if (fault || delayMs !== undefined) this.events.push({ call, op, fault, delayMs });
    if (delayMs !== undefined) this.sleep(delayMs);
    if (fault) {
      if (fault === 'CKR_TOKEN_NOT_PRESENT' && this.plan.stickyRemoval !== false) this.removed = true;
      throw new TokenError(faultCode[fault], `${op} failed on token '${this.label}': ${fault} (injected)`, {
        ckr: fault,
        operation: op,
        tokenLabel: this.label,
      });
    }
  }

  describe(): TokenDescription {
    return this.inner.describe();
  }
  seal(keyLabel: string, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
    this.before('seal');
    return this.inner.seal(keyLabel, plaintext, aad);
  }
  open(keyLabel: string, sealed: Uint8Array, aad: Uint8Array): Uint8Array {
    this.before('open');
    return this.inner.open(keyLabel, sealed, aad);
  }
  hmac(keyLabel: string, alg: HmacAlg, data: Uint8Array): Uint8Array {
    this.before('hmac');
    return this.inner.hmac(keyLabel, alg, data);
  }
  sign(keyLabel: string, data: Uint8Array): Uint8Array {
    this.before('sign');
    return this.inner.sign(keyLabel, data);
  }
  verify(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
    this.before('verify');
    return this.inner.verify(publicKey, data, signature);
  }
  publicKey(keyLabel: string): Uint8Array {
    this.before('publicKey');
    return this.inner.publicKey(keyLabel);
  }
  readData(label: string): Uint8Array {
    this.before('readData');
    return this.inner.readData(label);
  }
  writeData(label: string, value: Uint8Array): void {
    this.before('writeData');
    this.inner.writeData(label, value);
  }
  random(length: number): Uint8Array {
    this.before('random');
    return this.inner.random(length);
  }
  close(): void {
    this.inner.close();
  }
}
