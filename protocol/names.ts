// The one home of the validators every layer shares: what a user name and an error code may be.
// A relay, a peer message, a log entry and a device frame all check against these.

/** An account name: what ChatD issues and every vault record is keyed by. */
export const USER_RE = /^[A-Za-z0-9+._:@-]{1,64}$/;

/** A bkv error code on the vault side (replies, refusals, forwards): upper snake case, at most 48. */
export const ERROR_CODE_RE = /^[A-Z][A-Z0-9_]{0,47}$/;

/** A ChatD error code in a device frame (ChatD's own and relayed vault codes): at most 64. */
export const CHATD_CODE_RE = /^[A-Z][A-Z0-9_]{0,63}$/;

export const isUserName = (s: unknown): s is string => typeof s === 'string' && USER_RE.test(s);
export const isErrorCode = (s: unknown): s is string => typeof s === 'string' && ERROR_CODE_RE.test(s);
