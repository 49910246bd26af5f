// The ChatD -> vault hop over HTTP: wrap the device's bytes in a relay request naming the
// authenticated user, POST it to the vault, unwrap the relay reply. Every way this can fail becomes a
// ChatdReplyError with a stable code, so the device learns "unavailable" or "timed out", never a stack.
import http from 'node:http';
import {
  MAX_RELAY_BODY,
  REGION_HEADER,
  RELAY_PATH,
  decodeRelayReply,
  encodeRelayRequest,
  type RelayReply,
} from '../protocol/relay.ts';
import { isWireCode } from '../protocol/device-frames.ts';
import { ChatdConfigError, ChatdReplyError } from './errors.ts';
import { bearer } from '../protocol/hop-secret.ts';

/** A relay reply is the body plus msgpack framing; anything much larger is not one. */
const MAX_VAULT_REPLY = MAX_RELAY_BODY + 1024;

export interface VaultForwarderOptions {
  /** Base URL of the vault's HTTP front, e.g. http://127.0.0.1:7100 (RELAY_PATH is appended). */
  vaultUrl: string;
  timeoutMs: number;
  /** Sent as `authorization: Bearer` on every request: the vault refuses relays without it. */
  relayKey?: string;
}

export class VaultForwarder {
  readonly target: URL;
  // Pooled sockets idle for 2 s are dropped, well inside the vault's keep-alive timeout, so a reused
  // socket is not one the vault is closing (which would turn a good request into VAULT_UNAVAILABLE).
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 64, timeout: 2000 });
  private readonly timeoutMs: number;
  private readonly relayKey: string | undefined;
  /** Requests waiting on the vault, each with the function that aborts it. */
  private readonly live = new Map<http.ClientRequest, (e: ChatdReplyError) => void>();

  constructor(opts: VaultForwarderOptions) {
    let base: URL;
    try {
      base = new URL(opts.vaultUrl);
    } catch {
      throw new ChatdConfigError(`vault URL is not a URL: ${JSON.stringify(opts.vaultUrl)}`);
    }
    if (base.protocol !== 'http:') throw new ChatdConfigError('vault URL must be http:// (the hop is loopback)');
    this.target = new URL(RELAY_PATH, base);
    this.timeoutMs = opts.timeoutMs;
    this.relayKey = opts.relayKey;
  }

  /** `region`: the device's routing hint (already checked), passed on for the fleet front to honour. */
  async forward(user: string, body: Uint8Array, region?: string): Promise<Uint8Array> {
    let envelope: Uint8Array;
    try {
      envelope = encodeRelayRequest({ user, body });
    } catch (e) {
      throw new ChatdReplyError('BAD_REQUEST', (e as Error).message);
    }
    const { status, bytes } = await this.post(envelope, region);
    let reply: RelayReply;
    try {
      reply = decodeRelayReply(bytes);
    } catch {
      if (status === 503) throw new ChatdReplyError('UNAVAILABLE', 'the vault cannot serve right now');
      throw new ChatdReplyError('VAULT_UNAVAILABLE', `the vault answered HTTP ${status} without a relay reply`);
    }
    if (reply.ok) {
      if (status < 200 || status > 299) {
        throw new ChatdReplyError('VAULT_UNAVAILABLE', `the vault answered HTTP ${status}`);
      }
      return reply.body;
    }
    const vaultCode = isWireCode(reply.code) ? reply.code : 'UNKNOWN';
    const message = `vault: ${sanitize(reply.message)}`;
    if (status === 503) throw new ChatdReplyError('UNAVAILABLE', message, { vaultCode });
    throw new ChatdReplyError('VAULT_REJECTED', message, { vaultCode });
  }

  /** Aborts requests still waiting on the vault and drops pooled connections. */
  close(): void {
    for (const abort of this.live.values()) abort(new ChatdReplyError('UNAVAILABLE', 'ChatD is shutting down'));
    this.agent.destroy();
  }

  private post(envelope: Uint8Array, region?: string): Promise<{ status: number; bytes: Uint8Array }> {
    return new Promise((resolve, reject) => {
      let settled = false;
      // The first reason we gave up wins over whatever socket error the teardown then reports.
      let failure: ChatdReplyError | undefined;
      const kill = (e: ChatdReplyError) => {
        failure ??= e;
        req.destroy(e);
      };
      const done = (e: Error | null, v?: { status: number; bytes: Uint8Array }) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.live.delete(req);
        if (e) reject(failure ?? (e instanceof ChatdReplyError ? e : new ChatdReplyError('VAULT_UNAVAILABLE', 'cannot reach the vault')));
        else resolve(v!);
      };
      const req = http.request(this.target, {
        method: 'POST',
        agent: this.agent,
        headers: {
          'content-type': 'application/msgpack',
          'content-length': envelope.length,
          ...(this.relayKey === undefined ? {} : { authorization: bearer(this.relayKey) }),
          ...(region === undefined ? {} : { [REGION_HEADER]: region }),
        },
      });
      this.live.set(req, kill);
      const timer = setTimeout(() => {
        kill(new ChatdReplyError('VAULT_TIMEOUT', `the vault did not answer within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      req.on('error', (e) => done(e));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let n = 0;
        res.on('data', (c: Buffer) => {
          n += c.length;
          if (n > MAX_VAULT_REPLY) {
            kill(new ChatdReplyError('VAULT_UNAVAILABLE', 'the vault reply is too large'));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => {
          const b = Buffer.concat(chunks);
          done(null, { status: res.statusCode ?? 0, bytes: new Uint8Array(b.buffer, b.byteOffset, b.byteLength) });
        });
        res.on('error', (e) => done(e));
        res.on('aborted', () => done(new ChatdReplyError('VAULT_UNAVAILABLE', 'the vault dropped the connection')));
      });
      req.end(envelope);
    });
  }
}

// The vault's message is passed to the device; keep it one short printable line.
function sanitize(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, '?').slice(0, 200);
}
