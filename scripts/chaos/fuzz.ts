// Mutation fuzzing of every decoder that reads bytes or text from outside: device messages, vault
// replies, session frames, relay envelopes, ChatD frames and error bodies, peer frames, consensus
// messages, entries, hard states and snapshots, firmware entries and state snapshots, the process
// protocol, backup headers, 64-digit keys, token URIs, host:port flags, WAN configs. Each target
// starts from a kept corpus (the golden encodings of test/golden/, plus a few hand-made valid
// inputs) and is fed seeded mutations of it (bit flips, byte overwrites with edge values, inserts,
// deletions, truncation, extension, splices of two corpus items, random bytes). A decoder must
// return a value or throw a typed bkv error (BkvError): any other exception, or a hang, is a finding.
// Not coverage-guided (no maintained coverage-guided fuzzer for Node installs here without native
// builds); the mutations are structure-aware only through the corpus.
import { BkvError } from '../../protocol/errors.ts';
import { decodeDeviceMessage, decodeVaultReply } from '../../protocol/wire.ts';
import { decodeSessionFrame } from '../../protocol/session.ts';
import { decodeRelayReply, decodeRelayRequest } from '../../protocol/relay.ts';
import { chatdError, decodeErrorBody, decodeFrame, encodeErrorBody } from '../../protocol/device-frames.ts';
import { decodeConfChange, encodeConfChange, decodeEntry as decodeRaftEntry, decodeHardState, decodeMessage, decodeSnapshot } from '../../vault/consensus/codec.ts';
import { decodeEntry } from '../../vault/firmware/entries.ts';
import { VaultState } from '../../vault/firmware/state.ts';
import { decodePeer } from '../../vault/replica/peer-wire.ts';
import { decodeProcessLine, decodeReplicaControl, encodeProcessMessage, encodeReplicaControl } from '../../vault/fleet/process-protocol.ts';
import { parseHostPort } from '../../vault/fleet/process-config.ts';
import { parseWanConfigText } from '../../vault/fleet/wan.ts';
import { encryptBackup, parseHeader } from '../../client/backup-format.ts';
import { parseKey64 } from '../../client/key64.ts';
import { parseTokenSpec } from '../../hsm-adapter/uri.ts';
import { SeededRng } from '../../vault/consensus/rng.ts';
import { goldenEncodings } from '../../test/golden/encodings.ts';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface FuzzTarget {
  name: string;
  corpus: Uint8Array[];
  /** Decodes one input; text targets get the bytes as UTF-8. */
  run(input: Uint8Array): unknown;
}

export interface Finding {
  target: string;
  /** The input, hex. */
  input: string;
  error: string;
}

export interface FuzzResult {
  target: string;
  inputs: number;
  accepted: number;
  refused: number;
  findings: Finding[];
  ms: number;
}

const te = new TextEncoder();
const td = new TextDecoder();
const text = (s: string) => te.encode(s);
const fromHex = (h: string) => new Uint8Array(Buffer.from(h, 'hex'));

/** The kept corpora: golden encodings by name prefix, and valid inputs for the text formats. */
export async function fuzzTargets(): Promise<FuzzTarget[]> {
  const golden = goldenEncodings();
  const header = await backupHeader();
  const pick = (prefix: string) => Object.entries(golden).filter(([k]) => k.startsWith(prefix)).map(([, v]) => fromHex(v));
  const wanDefault = readFileSync(fileURLToPath(new URL('../../vault/fleet/wan-default.json', import.meta.url)));
  const str = (f: (s: string) => unknown) => (b: Uint8Array) => f(td.decode(b));
  return [
    { name: 'device-message', corpus: pick('device-message-'), run: decodeDeviceMessage },
    { name: 'vault-reply', corpus: pick('vault-reply-'), run: decodeVaultReply },
    { name: 'session-frame', corpus: [...pick('session-'), ...pick('device-message-').slice(0, 2)], run: decodeSessionFrame },
    { name: 'relay-request', corpus: pick('relay-request'), run: decodeRelayRequest },
    { name: 'relay-reply', corpus: pick('relay-reply-'), run: decodeRelayReply },
    { name: 'chatd-frame', corpus: [new Uint8Array([1, 1, 0, 0, 0, 7, 1, 2, 3]), new Uint8Array([1, 2, 0, 0, 0, 1])], run: decodeFrame },
    { name: 'chatd-error-body', corpus: [encodeErrorBody(chatdError('RATE_LIMITED', 'slow down', { retryAfterMs: 1000 })), encodeErrorBody(chatdError('VAULT_REJECTED', 'vault said no', { vaultCode: 'NO_SESSION' }))], run: decodeErrorBody },
    { name: 'peer-message', corpus: pick('peer-message-'), run: decodePeer },
    { name: 'raft-message', corpus: pick('raft-message-'), run: decodeMessage },
    { name: 'raft-entry', corpus: pick('raft-entry'), run: decodeRaftEntry },
    { name: 'raft-hard-state', corpus: pick('raft-hard-state'), run: decodeHardState },
    { name: 'raft-snapshot', corpus: pick('raft-snapshot'), run: decodeSnapshot },
    { name: 'raft-conf-change', corpus: [encodeConfChange({ op: 'init', conf: { voters: ['r1', 'r2', 'r3'], learners: ['r4'] } }), encodeConfChange({ op: 'addLearner', node: 'r5' }), encodeConfChange({ op: 'remove', node: 'r2' })], run: decodeConfChange },
    { name: 'firmware-entry', corpus: pick('firmware-entry-'), run: decodeEntry },
    { name: 'firmware-state-snapshot', corpus: pick('firmware-state-snapshot'), run: (b) => VaultState.decode(b) },
    {
      name: 'process-line',
      corpus: [text(encodeProcessMessage({ t: 'leader', term: 3 }).trimEnd()), text(encodeProcessMessage({ t: 'health', healthy: false, code: 'TAMPERED', reason: 'disk' }).trimEnd()), text(encodeProcessMessage({ t: 'role', role: 'follower', term: 4, leader: 'us-east' }).trimEnd())],
      run: str(decodeProcessLine),
    },
    {
      name: 'replica-control',
      corpus: [text(encodeReplicaControl({ t: 'token', failureRate: 0.05, latencyRate: 0.5, latencyMs: [1, 200] })), text(encodeReplicaControl({ t: 'clock', rate: 0.5, offsetMs: -30_000 }))],
      run: str(decodeReplicaControl),
    },
    { name: 'backup-header', corpus: [header, new Uint8Array(Buffer.concat([Buffer.from(header), Buffer.alloc(40, 9)]))], run: (b) => parseHeader(Buffer.from(b)) },
    { name: 'key64', corpus: [text('1234 5678 9012 3456 7890 1234 5678 9012 3456 7890 1234 5678 9012 3456 7890 1234')], run: str(parseKey64) },
    { name: 'token-uri', corpus: [text('pkcs11:token=us-east;object=record-key?pin-source=/tmp/pin'), text('pkcs11:serial=abc123;module-path=/usr/lib/softhsm/libsofthsm2.so'), text('us-east')], run: str(parseTokenSpec) },
    { name: 'host-port', corpus: [text('127.0.0.1:7001'), text('[::1]:80'), text('localhost:0')], run: str((s) => parseHostPort(s, '--listen')) },
    // The file's text as `--wan FILE` reads it: JSON syntax errors must come out typed too.
    { name: 'wan-config', corpus: [new Uint8Array(wanDefault)], run: str((s) => parseWanConfigText(s, 'fuzz')) },
  ];
}

/** A real backup file's header (fixed key, salt and nonce prefix), as encryptBackup writes it. */
async function backupHeader(): Promise<Uint8Array> {
  const none = (async function* (): AsyncGenerator<Uint8Array> { /* an empty backup */ })();
  for await (const chunk of encryptBackup(none, new Uint8Array(32).fill(7), { mode: 'key64', salt: Buffer.alloc(32, 1), noncePrefix: Buffer.alloc(7, 2) })) return new Uint8Array(chunk);
  throw new Error('encryptBackup wrote no header');
}

const EDGES = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xc4, 0xc5, 0xc6, 0xce, 0xcf, 0xd3, 0xcb, 0x90, 0x80, 0xa0, 0x22, 0x7b, 0x5b, 0x3a, 0x2c];

/** One seeded mutation of a corpus item. */
export function mutate(rng: SeededRng, corpus: Uint8Array[]): Uint8Array {
  const base = corpus[rng.int(corpus.length)] ?? new Uint8Array(0);
  let b: Uint8Array = Uint8Array.from(base);
  const rounds = 1 + rng.int(4);
  for (let r = 0; r < rounds; r++) {
    const op = rng.int(10);
    const at = b.length ? rng.int(b.length) : 0;
    switch (op) {
      case 0: if (b.length) b[at] = b[at]! ^ (1 << rng.int(8)); break;
      case 1: if (b.length) b[at] = EDGES[rng.int(EDGES.length)]!; break;
      case 2: if (b.length) b[at] = rng.int(256); break;
      case 3: { const n = 1 + rng.int(8); const ins = Uint8Array.from({ length: n }, () => (rng.int(2) ? EDGES[rng.int(EDGES.length)]! : rng.int(256))); b = concat(b.subarray(0, at), ins, b.subarray(at)); break; }
      case 4: { const n = 1 + rng.int(Math.max(1, b.length >> 2)); b = concat(b.subarray(0, at), b.subarray(Math.min(b.length, at + n))); break; }
      case 5: b = b.subarray(0, rng.int(b.length + 1)); break;
      case 6: { const o = corpus[rng.int(corpus.length)]!; b = concat(b.subarray(0, at), o.subarray(rng.int(o.length + 1))); break; }
      case 7: { const n = rng.int(64); b = concat(b, Uint8Array.from({ length: n }, () => rng.int(256))); break; }
      case 8: { const from = rng.int(b.length + 1); const n = rng.int(16); b = concat(b.subarray(0, from), b.subarray(from, from + n), b.subarray(from)); break; }
      default: b = Uint8Array.from({ length: rng.int(48) }, () => rng.int(256));
    }
  }
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

/** Runs `inputs` mutated inputs (and the corpus itself) through one target. */
export function fuzzTarget(t: FuzzTarget, inputs: number, seed: number, onProgress?: (done: number) => void): FuzzResult {
  const rng = new SeededRng((seed ^ hashName(t.name)) >>> 0);
  const t0 = performance.now();
  const findings: Finding[] = [];
  const seen = new Set<string>();
  let accepted = 0, refused = 0;
  const one = (input: Uint8Array) => {
    try {
      t.run(input);
      accepted++;
    } catch (e) {
      if (e instanceof BkvError) { refused++; return; }
      const err = e instanceof Error ? `${e.constructor.name}: ${e.message}` : `thrown ${typeof e}: ${String(e)}`;
      // One finding per kind of failure (the message without its numbers).
      const kind = err.replace(/\d+/g, 'N').slice(0, 120);
      if (!seen.has(kind) && findings.length < 20) { seen.add(kind); findings.push({ target: t.name, input: Buffer.from(input).toString('hex'), error: err.slice(0, 300) }); }
    }
  };
  for (const c of t.corpus) one(c);
  for (let i = 0; i < inputs; i++) {
    one(mutate(rng, t.corpus));
    if (onProgress && (i + 1) % 50_000 === 0) onProgress(i + 1);
  }
  return { target: t.name, inputs: inputs + t.corpus.length, accepted, refused, findings, ms: Math.round(performance.now() - t0) };
}

function hashName(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** Runs targets on worker threads (each target on one), calling `onResult` as each finishes. */
export async function fuzzTargetsInWorkers(names: string[], inputs: number, seed: number, workers: number, onResult: (r: FuzzResult) => void): Promise<FuzzResult[]> {
  const { Worker } = await import('node:worker_threads');
  const { resolve } = await import('node:path');
  const all: FuzzResult[] = [];
  const n = Math.max(1, Math.min(workers, names.length));
  await Promise.all(Array.from({ length: n }, (_, w) => new Promise<void>((res, rej) => {
    const mine = names.filter((_, i) => i % n === w);
    const wk = new Worker(resolve(fileURLToPath(import.meta.url), '../../../bin/ts-worker.js'), { workerData: { __entry: import.meta.url, chaosFuzz: { names: mine, inputs, seed } } });
    wk.on('message', (r: FuzzResult) => { all.push(r); onResult(r); });
    wk.on('error', rej);
    wk.on('exit', (code) => (code === 0 ? res() : rej(new Error(`fuzz worker ${w} exited with code ${code}`))));
  })));
  return all.sort((a, b) => names.indexOf(a.target) - names.indexOf(b.target));
}

{
  const { isMainThread, parentPort, workerData } = await import('node:worker_threads');
  const job = (workerData as { chaosFuzz?: { names: string[]; inputs: number; seed: number } } | undefined)?.chaosFuzz;
  if (!isMainThread && job) {
    const targets = await fuzzTargets();
    for (const name of job.names) parentPort!.postMessage(fuzzTarget(targets.find((t) => t.name === name)!, job.inputs, job.seed));
  }
}
