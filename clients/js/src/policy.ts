/**
 * The client's decisions, as pure functions: how long to wait before the next
 * attempt, and whether a lost connection is worth another one. Nothing here
 * touches a socket or a timer, so the tests can check every case.
 * The rules are docs/protocol.md's "Reconnecting" and "Close codes".
 */

/**
 * Exponential backoff with full jitter: a random wait between 0 and
 * min(cap, base × 2^attempt) milliseconds. The randomness spreads out the
 * clients of a node that went away, which all reconnect at the same moment.
 */
export function backoff(attempt: number, base: number, cap: number, random: () => number = Math.random): number {
  return random() * Math.min(cap, base * 2 ** attempt);
}

/**
 * What to do after a connection closed with `code`: `false` to stop for good
 * (retrying cannot help), else how many extra backoff steps to take.
 *
 * - 1008, 4001, 4003: refused by policy or credential; surface, do not retry.
 * - 4011: the credential expired; retry only if a callback can fetch a fresh one.
 * - 4029: rate limited; retry after a longer backoff.
 * - anything else, known or not (1000 not asked for, 1001, 1006, 1011, 1012,
 *   1013, 4008, 4503, ...): resume with backoff.
 */
export function retryAfterClose(code: number, renewable: boolean): false | number {
  if (code == 1008 || code == 4001 || code == 4003) return false;
  if (code == 4011) return renewable && 0;
  return code == 4029 ? 3 : 0;
}

/**
 * The close code that means the same as an SSE refusal (HTTP status and the
 * body's `error`), so that one table, {@link retryAfterClose}, decides for both
 * transports. A 400 means a wrong URL: retrying it unchanged cannot help.
 */
export function closeCodeOfStatus(status: number, error?: string): number {
  if (status == 401) return error == "token_expired" ? 4011 : 4001;
  if (status == 403) return 4003;
  if (status >= 400 && status < 500 && status != 408 && status != 429) return 1008;
  return 1013;
}
