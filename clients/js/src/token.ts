/**
 * When a JWT expires: the client reads the `exp` claim (never verifies anything: that is
 * the gateway's job) to get a new token before the gateway closes the session with 3005.
 */

/** The token's `exp` in milliseconds since the epoch, or undefined when it has none. */
export function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split(".")[1];
    if (!part) return undefined;
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(base64.padEnd(base64.length + ((4 - (base64.length % 4)) % 4), "="))).exp;
    return typeof exp === "number" && isFinite(exp) ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * How long before `exp` to get a new token: a fifth of the token's remaining lifetime,
 * between 1 s and 60 s, so short-lived tokens are renewed in time and long-lived ones
 * not too early.
 */
export function refreshLead(expiresAt: number, now: number): number {
  return Math.min(60_000, Math.max(1_000, (expiresAt - now) / 5));
}
