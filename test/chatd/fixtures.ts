// What the ChatD suites share: a stand-in vault (a real HTTP server on loopback that decodes the relay
// envelope ChatD sends and records it), a temporary state directory with accounts, and a log capture.
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RELAY_PATH, decodeRelayRequest, encodeRelayReply, type RelayRequest } from '../../protocol/relay.ts';
import type { ChatdLogEntry } from '../../chatd/log.ts';

export type VaultHandler = (r: RelayRequest, res: http.ServerResponse) => unknown;

/**
 * The vault's answer in these tests: the body reversed and XORed with 0x5a, so a plain echo fails; same
 * length, since relay replies share the body limit.
 */
export function transform(body: Uint8Array): Uint8Array {
  return Uint8Array.from(body, (_, i) => body[body.length - 1 - i]! ^ 0x5a);
}

export const replyOk: VaultHandler = (r, res) => {
  const bytes = encodeRelayReply({ ok: true, body: transform(r.body) });
  res.writeHead(200, { 'content-type': 'application/msgpack' }).end(bytes);
};

export interface StandInVault {
  url: string;
  /** Every relay envelope received, decoded. */
  received: RelayRequest[];
  /** Raw requests that were not valid relay envelopes or hit another route. */
  rejected: number;
  handler: VaultHandler;
  /** Highest number of requests open at the vault at once. */
  maxConcurrent: number;
  close(): Promise<void>;
}

export async function startStandInVault(): Promise<StandInVault> {
  let open = 0;
  const v: StandInVault = {
    url: '',
    received: [],
    rejected: 0,
    handler: replyOk,
    maxConcurrent: 0,
    close: async () => {},
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      if (req.method !== 'POST' || req.url !== RELAY_PATH || req.headers['content-type'] !== 'application/msgpack') {
        v.rejected++;
        res.writeHead(404).end();
        return;
      }
      let r: RelayRequest;
      try {
        r = decodeRelayRequest(new Uint8Array(Buffer.concat(chunks)));
      } catch {
        v.rejected++;
        res.writeHead(400).end();
        return;
      }
      v.received.push(r);
      open++;
      v.maxConcurrent = Math.max(v.maxConcurrent, open);
      res.on('close', () => open--);
      await v.handler(r, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const a = server.address() as { port: number };
  v.url = `http://127.0.0.1:${a.port}`;
  v.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return v;
}

export function tempState(): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'bkv-chatd-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function captureLog(): { entries: ChatdLogEntry[]; log: (e: ChatdLogEntry) => void } {
  const entries: ChatdLogEntry[] = [];
  return { entries, log: (e) => entries.push(e) };
}

/** A port nothing listens on (bound, read, released). */
export async function closedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as { port: number };
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export function randomBody(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(Math.random() * 256);
  return b;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
