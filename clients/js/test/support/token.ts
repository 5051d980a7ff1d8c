/** HS256 tokens for tests, signed with the secret the test pods are configured with. */
import { createHmac } from "node:crypto";

export const SECRET = "test-secret-test-secret-test-secret-0123";

const b64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

/** A token for `user`, valid for `ttlS` seconds from now, with an optional `topics` claim. */
export function token(
  user: string,
  options: { topics?: string[]; publish?: string[]; ttlS?: number; secret?: string } = {},
): string {
  const now = Math.floor(Date.now() / 1000);
  const claims: Record<string, unknown> = { sub: user, iat: now, exp: now + (options.ttlS ?? 3600) };
  if (options.topics) claims.topics = options.topics;
  if (options.publish) claims.publish = options.publish;
  const head = `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}`;
  const signature = createHmac("sha256", options.secret ?? SECRET).update(head).digest("base64url");
  return `${head}.${signature}`;
}
