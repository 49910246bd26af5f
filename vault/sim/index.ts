// The deterministic test cluster's public face.
export { SimCluster, type ClusterOptions, type NetConfig, type ClientOp, type OpKind, type DurableState } from './cluster.ts';
export { KvApp, encodeCommand, decodeCommand, type KvCommand } from './kv.ts';
export { Checker } from './checker.ts';
export { randomRun, type RandomRunOptions, type RandomRunResult } from './nemesis.ts';
export { VaultCluster, DeviceTimeout, type VaultClusterOptions, type FirmwareLike, type RequestMeta } from './vault-cluster.ts';
export { VaultOracle } from './vault-oracle.ts';
