// The fleet's relay front, like ChatD's and the single vault's: a slow client is cut with 408 at the
// request timeout (not up to 30 s later), and connections past the cap are closed as they arrive.
// A real one-replica fleet (worker thread, SoftHSM2 token, LMDB) behind it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { decodeRelayReply, RELAY_PATH } from '../../protocol/relay.ts';
import { startFleetFixture, type FleetFixture } from './fleet-fixture.ts';

let fx: FleetFixture;
beforeAll(async () => { fx = await startFleetFixture(1, { frontLimits: { requestTimeoutMs: 500, maxConnections: 2 } }); });
afterAll(async () => { await fx?.close(); });

function open(port: number, first: string) {
  const t0 = performance.now();
  const sock = connect(port, '127.0.0.1', () => sock.write(first));
  const chunks: Buffer[] = [];
  sock.on('data', (d: Buffer) => chunks.push(d));
  sock.on('error', () => undefined);
  return new Promise<{ ms: number; head: string; body: Uint8Array }>((res) => sock.on('close', () => {
    const all = Buffer.concat(chunks);
    const at = all.indexOf('\r\n\r\n');
    res({ ms: performance.now() - t0, head: all.subarray(0, Math.max(0, at)).toString('latin1'), body: new Uint8Array(at < 0 ? [] : all.subarray(at + 4)) });
  }));
}

describe('the fleet front', () => {
  it('answers a slow request 408 REQUEST_TIMEOUT at the stated time and closes connections past its cap', async () => {
    const port = Number(new URL(fx.fleet.url).port);
    const slow = [open(port, `POST ${RELAY_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 64\r\n\r\nab`), open(port, `POST ${RELAY_PATH} HTTP/1.1\r\nhost: x\r\n`)];
    await new Promise((r) => setTimeout(r, 100));
    const third = await open(port, `POST ${RELAY_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n`);
    expect(third.head).toBe('');
    expect(third.ms).toBeLessThan(300);
    for (const s of await Promise.all(slow)) {
      expect(s.head.split('\r\n')[0]).toBe('HTTP/1.1 408 Request Timeout');
      expect(decodeRelayReply(s.body)).toMatchObject({ ok: false, code: 'REQUEST_TIMEOUT' });
      expect(s.ms).toBeGreaterThanOrEqual(490);
      expect(s.ms).toBeLessThan(900);
    }
  });
});
