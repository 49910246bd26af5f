import { it } from 'vitest';
import { provisionTestFleet } from './helpers/fleet.ts';
import { tokenServerSecrets } from '../protocol/opaque/index.ts';
import { randomVaultRun } from './vault/sim-vault-workload.ts';
it('dbg', async () => {
  const fleet = await provisionTestFleet({ replicas: 3 });
  const tokens = new Map(fleet.replicas.map((r) => [r.name, fleet.openToken(r.tokenLabel) as any]));
  const serverPublicKey = tokenServerSecrets([...tokens.values()][0]!, 'ristretto255-SHA512').akeKeyPair.publicKey;
  const r = await randomVaultRun({ seed: 20863, tokens, serverPublicKey, diskFaults: true });
  const c: any = r.cluster;
  for (const id of c.ids) { const x = c.replicas.get(id); console.log(id, 'up', !!x.node, 'rejoining', x.rejoining, 'floor', x.floor, 'commit', x.node?.commitIndex, 'last', x.node?.lastIndex, 'applied', x.applied, 'anchor', JSON.stringify(x.tokenState.anchor), 'leader', x.node?.leader, 'role', x.node?.softState().role); }
  console.log(r.violations.slice(0, 3));
  await fleet.cleanup();
}, 120000);
