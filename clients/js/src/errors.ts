/**
 * The error codes the client reports. The gateway's own codes (`forbidden_topic`,
 * `unavailable`, `bad_request`, `invalid_token`, …) pass through as they are; the client
 * adds `closed`, `unsubscribed`, `token` and `protocol`.
 */
export type ErrorCode =
  | "forbidden_topic"
  | "unavailable"
  | "bad_request"
  | "invalid_token"
  | "closing"
  | "closed"
  | "unsubscribed"
  | "token"
  | "protocol"
  | (string & {});

/** An error with the code that says what went wrong. */
export class WsgateError extends Error {
  constructor(
    readonly code: ErrorCode,
    message = code,
  ) {
    super(message);
    this.name = "WsgateError";
  }
}
