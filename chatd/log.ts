// ChatD's structured log: one JSON object per event. Entries are built from the fields below only,
// so a token or body bytes cannot reach the log by accident: there is no free-form field for them.

export interface ChatdLogEntry {
  /** ISO time the event completed. */
  t: string;
  event: 'listening' | 'request' | 'ws-open' | 'ws-close' | 'closed' | 'account-store-error';
  /** Client address (IP only). */
  addr?: string;
  /** accountTag(): a prefix of SHA-256(token); absent before authentication. */
  acct?: string;
  route?: string;
  method?: string;
  /** 'http' or 'ws'. */
  via?: 'http' | 'ws';
  /** WebSocket request id (device-chosen). */
  id?: number;
  /** Bytes received from the device / sent back to it (body or frame payload only). */
  inBytes?: number;
  outBytes?: number;
  status?: number;
  /** Error code when status >= 400 (a ChatdErrorCode, or the vault's code for VAULT_REJECTED). */
  code?: string;
  vaultCode?: string;
  ms?: number;
  url?: string;
  /** ws-close: close code and how many requests the session carried. */
  closeCode?: number;
  requests?: number;
}

export type ChatdLog = (entry: ChatdLogEntry) => void;

/** JSON lines on stderr (stdout is reserved for the URL line of chatd/main.ts). */
export const stderrLog: ChatdLog = (e) => {
  process.stderr.write(JSON.stringify(e) + '\n');
};

export const silentLog: ChatdLog = () => {};
