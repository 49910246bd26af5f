// ChatD's typed errors. Account-store errors surface through the CLI; ChatdReplyError carries a wire
// error (code + HTTP status) from the place it is detected to the one place that writes replies.
import { BkvError, InputError } from '../protocol/errors.ts';
import { chatdError, type ChatdErrorBody, type ChatdErrorCode } from '../protocol/device-frames.ts';

export class InvalidPhoneError extends InputError {
  constructor(message: string) {
    super(message, 'BAD_PHONE');
  }
}

export class AccountExistsError extends BkvError {
  constructor(phone: string) {
    super('ACCOUNT_EXISTS', `an active account already exists for ${phone} (revoke it first to issue a new token)`);
  }
}

export class AccountNotFoundError extends BkvError {
  constructor(phone: string) {
    super('ACCOUNT_NOT_FOUND', `no active account for ${phone}`);
  }
}

/** The account file is unreadable or not what ChatD writes; nothing was changed. */
export class AccountStoreError extends BkvError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BAD_ACCOUNT_STORE', message, options);
  }
}

export class AccountStoreBusyError extends BkvError {
  constructor(path: string) {
    super('ACCOUNT_STORE_BUSY', `account store is locked by another process (${path})`);
  }
}

export class ChatdConfigError extends InputError {
  constructor(message: string) {
    super(message, 'BAD_CHATD_CONFIG');
  }
}

/** A failure that becomes a ChatD error reply (HTTP status + JSON body, or an ERROR frame). */
export class ChatdReplyError extends BkvError {
  readonly body: ChatdErrorBody;
  constructor(code: ChatdErrorCode, message: string, extra?: { retryAfterMs?: number; vaultCode?: string; status?: number }) {
    super(code, message);
    this.body = chatdError(code, message, extra);
  }
  get status(): number {
    return this.body.status;
  }
}
