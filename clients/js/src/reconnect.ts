/**
 * The reconnect contract of the wsgate protocol (docs/protocol.md): which close codes
 * reconnect, and how long to wait before the next attempt.
 */

/** What the client does after a connection closed with a code. */
export type CloseAction = "reconnect" | "token" | "stop";

/**
 * Codes after which the client does not reconnect by itself: the application closed, the
 * client broke the protocol (reconnecting would break it again), the message was too big,
 * a `Disconnect` caller kicked the session, or a revocation closed it (3006: the same
 * credentials would be refused).
 */
const STOP_CODES = new Set([1000, 1002, 1003, 1007, 1008, 1009, 1010, 3003, 3006]);

/** The token expired: get a new one, then reconnect. */
export const TOKEN_EXPIRED = 3005;

/**
 * 1001, 1006, 1011, 3001, 3008 and 3010 reconnect, as do codes the protocol does not name
 * (a proxy's 1012–1014, a close without a code): the safe choice for a client that must
 * not stay away by mistake. 4000–4999 belong to the application and stop.
 */
export function closeAction(code: number): CloseAction {
  if (code === TOKEN_EXPIRED) return "token";
  if (STOP_CODES.has(code) || (code >= 4000 && code <= 4999)) return "stop";
  return "reconnect";
}

/** Exponential backoff with full jitter: `random(0, min(cap, base * 2^attempt))`. */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random = Math.random): number {
  return random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 31));
}
