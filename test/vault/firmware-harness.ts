// Drives a Firmware directly (no agent): proposals commit in order when the test says so, so tests
// can hold a commit back and see what the firmware does (or does not) say meanwhile. Devices
// (send()) reach it through the production session gate around it, as on a real replica; tests that
// speak the inner protocol step plain request bodies into the bare firmware beside the gate.
import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import type { Firmware, FirmwareInput, FirmwareOutput } from '../../vault/firmware/firmware.ts';
import { SessionGate } from '../../vault/firmware/gate.ts';
import { SESSION_VERSION } from '../../protocol/session.ts';

/** Deterministic byte stream: SHA-256(seed || counter) blocks. */
export function seededRng(seed: string): (n: number) => Uint8Array {
  let counter = 0;
  let buf = new Uint8Array(0);
  return (n) => {
    while (buf.length < n) {
      const block = createHash('sha256').update(seed).update(String(counter++)).digest();
      const next = new Uint8Array(buf.length + block.length);
      next.set(buf, 0);
      next.set(block, buf.length);
      buf = next;
    }
    const out = buf.slice(0, n);
    buf = buf.slice(n);
    return out;
  };
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

export class Harness {
  index = 0;
  nextRequest = 1;
  readonly inputs: FirmwareInput[] = [];
  readonly transcript: Uint8Array[] = [];
  readonly proposed: Array<{ tag: number; entry: Uint8Array }> = [];
  readonly replies = new Map<number, Uint8Array>();
  autoCommit = true;

  readonly gate: SessionGate;

  constructor(readonly fw: Firmware) {
    this.gate = new SessionGate({ firmware: fw });
  }

  step(input: FirmwareInput): FirmwareOutput[] {
    this.inputs.push(input);
    // Session frames go through the gate; inner-protocol bodies (msgpack maps) straight to the firmware.
    const plain = input.kind === 'request' && input.body[0] !== SESSION_VERSION;
    const out = plain ? this.fw.step(input) : this.gate.step(input);
    this.transcript.push(packr.pack(out));
    for (const o of out) {
      if (o.kind === 'propose') this.proposed.push({ tag: o.tag, entry: o.entry });
      if (o.kind === 'reply') this.replies.set(o.requestId, o.body);
    }
    if (this.autoCommit) this.commitAll();
    return out;
  }

  commitAll(): void {
    while (this.proposed.length > 0) {
      const p = this.proposed.shift()!;
      this.step({ kind: 'committed', index: ++this.index, entry: p.entry });
    }
  }

  /**
   * One request with its commits held back and released one by one: what the firmware output at once,
   * how many commits it took until the reply, and the reply. Auto-commit is restored afterwards.
   */
  held(user: string, body: Uint8Array): { reply: Uint8Array; immediate: string[]; commits: number } {
    this.autoCommit = false;
    const requestId = this.nextRequest++;
    const immediate = this.step({ kind: 'request', requestId, user, body }).map((o) => o.kind);
    let commits = 0;
    while (!this.replies.has(requestId) && this.proposed.length > 0) {
      this.step({ kind: 'committed', index: ++this.index, entry: this.proposed.shift()!.entry });
      commits++;
    }
    this.autoCommit = true;
    this.commitAll();
    return { reply: this.replies.get(requestId)!, immediate, commits };
  }

  /** A device's send(): one request in, its reply out (commits flow as they come). */
  send(user: string): (body: Uint8Array) => Promise<Uint8Array> {
    return async (body) => {
      const requestId = this.nextRequest++;
      this.step({ kind: 'request', requestId, user, body });
      const reply = this.replies.get(requestId);
      if (!reply) throw new Error('no reply (commit held back?)');
      return reply;
    };
  }
}
