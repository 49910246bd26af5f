// Child-process entry for the TCP transport test: one replica with its own SoftHSM2 token and a
// TcpTransport, driven over stdin/stdout with JSON lines.
//   argv[2]: JSON { stateDir, self, tokenLabel, port?, pins: { id: hex } }
import { createInterface } from 'node:readline';
import { loadState, activateSoftHsmConf } from '../../softhsm/state.ts';
import { openToken, finalizeModule } from '../../hsm-adapter/pkcs11-token.ts';
import { TcpTransport } from '../../vault/fleet/transport-tcp.ts';

const init = JSON.parse(process.argv[2]!) as { stateDir: string; self: string; tokenLabel: string; port?: number; pins: Record<string, string> };
const state = loadState(init.stateDir);
activateSoftHsmConf(state);
const token = openToken({
  modulePath: state.modulePath, token: init.tokenLabel, pin: state.pinFor(init.tokenLabel), sealScheme: state.sealSchemeFor(init.tokenLabel),
});
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');

const t = await TcpTransport.start({
  fleetId: 'tcp-test', self: init.self, token,
  pins: new Map(Object.entries(init.pins).map(([id, hex]) => [id, Uint8Array.from(Buffer.from(hex, 'hex'))])),
  listen: { host: '127.0.0.1', port: init.port ?? 0 },
  backoff: { initialMs: 20, maxMs: 200 },
  handshakeTimeoutMs: 2_000,
  onEvent: (e) => out({ type: 'event', event: e.type === 'handler-error' ? { type: e.type } : e }),
});
t.onMessage((from, bytes) => out({ type: 'msg', from, text: new TextDecoder().decode(bytes) }));

const rl = createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const m = JSON.parse(line) as { type: string; id?: number; to?: string; text?: string; peer?: string; host?: string; port?: number };
  if (m.type === 'addr') t.setPeerAddress(m.peer!, { host: m.host!, port: m.port! });
  else if (m.type === 'send') t.send(m.to!, new TextEncoder().encode(m.text!));
  else if (m.type === 'stats') out({ type: 'stats', id: m.id, stats: t.stats() });
  else if (m.type === 'exit') {
    await t.close();
    token.close();
    finalizeModule();
    rl.close();
    out({ type: 'bye' });
  }
});
out({ type: 'ready', port: t.address.port });
