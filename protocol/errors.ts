/**
 * Every error that crosses the wire, in one table.
 *
 * An error travels master -> HTTP -> CLI: the master answers with the code's HTTP
 * status and a body `{ error: { code, message, hint, details } }`; the CLI prints the
 * message and the hint on stderr and exits with the code's exit code.
 *
 * @example
 *   throw new PledgerError('INSTANCE_NOT_FOUND', `no instance named "${title}"`);
 */
export const ERRORS = {
  BAD_REQUEST: {
    status: 400,
    exitCode: 2,
    hint: 'check the command line or the request body against docs/api.md',
  },
  INVALID_PARAMETERS: {
    status: 422,
    exitCode: 2,
    hint: 'see the parameters the software type accepts with `pledger software show NAME`',
  },
  UNAUTHENTICATED: {
    status: 401,
    exitCode: 3,
    hint: 'pass --token, set PLEDGER_TOKEN, or run `pledger login`',
  },
  FORBIDDEN: {
    status: 403,
    exitCode: 3,
    hint: 'this needs another account: ask an operator',
  },
  /** A customer held for non-payment asked to start an instance or for a new one. */
  PAYMENT_REQUIRED: {
    status: 402,
    exitCode: 8,
    hint: 'pay the overdue invoice: `pledger billing balance` names it',
  },
  NOT_FOUND: { status: 404, exitCode: 4, hint: 'check the name' },
  INSTANCE_NOT_FOUND: { status: 404, exitCode: 4, hint: 'list your instances with `pledger list`' },
  SOFTWARE_NOT_FOUND: {
    status: 404,
    exitCode: 4,
    hint: 'list the software releases with `pledger software list`',
  },
  NODE_NOT_FOUND: { status: 404, exitCode: 4, hint: 'list the nodes with `pledger node list`' },
  ACCOUNT_NOT_FOUND: { status: 404, exitCode: 4, hint: 'check the account name' },
  CONFLICT: { status: 409, exitCode: 5, hint: 'choose another name or version' },
  SOFTWARE_INVALID: {
    status: 422,
    exitCode: 2,
    hint: 'fix software.yaml; docs/software-releases.md describes the format',
  },
  /** A source or built part archive a node uploads that no node could unpack. */
  ARCHIVE_INVALID: {
    status: 422,
    exitCode: 2,
    hint: 'the archive is damaged or not a tar archive: build or download it again',
  },
  /** A report about a period that has not ended yet: refused now, welcome later. */
  TOO_EARLY: {
    status: 400,
    exitCode: 2,
    hint: "the node's clock is ahead of the master's: check the time synchronisation of both",
  },
  PAYLOAD_TOO_LARGE: { status: 413, exitCode: 2, hint: 'send less data' },
  MASTER_UNREACHABLE: {
    status: 503,
    exitCode: 6,
    hint: 'is the master running? check --master or PLEDGER_MASTER_URL',
  },
  /**
   * The master is up but lost its database for a moment (a connection closed by the
   * server, a restart, a failover): nothing was changed, and the same call succeeds
   * once the master has reconnected. The client and the node agent retry by themselves.
   */
  SERVICE_UNAVAILABLE: {
    status: 503,
    exitCode: 6,
    hint: 'the master lost its database connection for a moment: try again shortly',
  },
  TIMEOUT: { status: 504, exitCode: 7, hint: 'try again, or wait longer with --timeout' },
  NODE_FAILURE: { status: 500, exitCode: 1, hint: 'see the node agent log' },
  INTERNAL: { status: 500, exitCode: 1, hint: 'see the master log' },
} as const satisfies Record<string, { status: number; exitCode: number; hint: string }>;

export type ErrorCode = keyof typeof ERRORS;

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERRORS, code);
}

/** The JSON body of every error answer of the master. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string; hint?: string; details?: unknown };
}

export class PledgerError extends Error {
  readonly code: ErrorCode;
  readonly hint: string;
  readonly details: unknown;

  constructor(
    code: ErrorCode,
    message: string,
    options: { hint?: string; details?: unknown; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = 'PledgerError';
    this.code = code;
    this.hint = options.hint ?? ERRORS[code].hint;
    this.details = options.details;
  }

  get status(): number {
    return ERRORS[this.code].status;
  }

  get exitCode(): number {
    return ERRORS[this.code].exitCode;
  }

  toBody(): ErrorBody {
    const body: ErrorBody = { error: { code: this.code, message: this.message, hint: this.hint } };
    if (this.details !== undefined) body.error.details = this.details;
    return body;
  }

  /** Rebuilds the error a master sent, so that a client can throw it again. */
  static fromBody(body: unknown, status: number): PledgerError {
    const error = (body as Partial<ErrorBody> | undefined)?.error;
    if (error && isErrorCode(error.code) && typeof error.message === 'string') {
      return new PledgerError(error.code, error.message, { hint: error.hint, details: error.details });
    }
    return new PledgerError(status >= 500 ? 'INTERNAL' : 'BAD_REQUEST', `the master answered HTTP ${status}`);
  }
}
