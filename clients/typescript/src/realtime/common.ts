// What the WebSocket and the event-stream helpers share: how they authenticate, when they give up, how long
// they wait between attempts, and the per-channel positions (the last `seq` delivered) they resume from.
import type { Client } from '../generated/client/index.js';
import type { MessageRead } from '../generated/types.gen.js';
import { realtimeCreateTicket } from '../generated/sdk.gen.js';

/**
 * How a realtime connection proves who it is (SPEC §7, §8). Each is asked again before every attempt, so a
 * refreshed token or a fresh single-use ticket is used.
 * - `ticket`: a `?ticket=` from `POST /realtime/tickets`; works everywhere, the only choice for a browser without
 *   a session cookie. {@link ticketsFrom} builds one from a generated client.
 * - `bearer`: an `Authorization` header; only where the constructor can send headers (`ws` and `eventsource`
 *   in Node), never a browser's own WebSocket or EventSource.
 * - `'cookie'`: the browser session cookie (`POST /auth/session`); nothing to add.
 */
export type Auth = { ticket: () => Promise<string> } | { bearer: () => string | Promise<string> } | 'cookie';

/** An auth callback throws this to end the connection for good instead of trying again (a 401, a 403). */
export class AuthRefused extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'AuthRefused';
  }
}

/** Single-use tickets from `POST /api/v2/realtime/tickets` through `client` (which carries the bearer token). */
export function ticketsFrom(client: Client): { ticket: () => Promise<string> } {
  return {
    async ticket() {
      const { data, response } = await realtimeCreateTicket({ client });
      if (data !== undefined) return data.ticket;
      if (response === undefined) throw new Error('ticket request failed: the server cannot be reached');
      if (response.status === 401 || response.status === 403) {
        throw new AuthRefused(response.status, `ticket refused with ${response.status}`);
      }
      throw new Error(`ticket request answered ${response.status}`); // 429, 503: try again later
    },
  };
}

export interface Backoff {
  /** The first wait after a connection drops, in ms (default 500). */
  initialMs?: number;
  /** The longest wait, in ms (default 30 000); waits double up to it, with jitter. */
  maxMs?: number;
}

export interface RealtimeOptions {
  /** `http(s)://host:port` of keel; in a browser it defaults to the page's origin. */
  baseUrl?: string;
  /** Channel ids to follow. */
  channels: readonly string[];
  /**
   * Where to start in each channel: the last `seq` already held (0 for all of it). A channel without one starts
   * live; from its first connection on, the helper tracks its position and resumes from there.
   */
  since?: Readonly<Record<string, number>>;
  auth: Auth;
  /** Each message once, in `seq` order per channel, across reconnects. */
  onMessage: (message: MessageRead) => void;
  /** A connection opened (the first one, then every reconnect). */
  onOpen?: () => void;
  /** A connection dropped and another attempt follows after `delayMs`. */
  onRetry?: (reason: string, delayMs: number) => void;
  backoff?: Backoff;
}

/** Why a helper stopped for good: `close()` was called (code 1000), or the server refused to go on. */
export interface Ended {
  code: number;
  reason: string;
}

export interface Subscription {
  /** Stop, and do not reconnect. */
  close(): void;
  /** Settles when the helper stops for good. */
  readonly ended: Promise<Ended>;
  /** The last `seq` delivered per channel: where a new subscription would resume. */
  positions(): Record<string, number>;
}

// Close codes that mean "this will not work by trying again": protocol errors, the server's own policy refusal
// (1008), a frame too large (1009), and the 4400-4499 range, which keel uses for 4000 + an HTTP client status
// (4401 revoked session, 4403 forbidden), except timeouts and rate limits. Everything else (1001 shutdown,
// 1006 dropped, 1011 server error, 1012 restart, 1013 try later, ...) is retried and resumed.
const FINAL_CLOSE_CODES: ReadonlySet<number> = new Set([1002, 1003, 1007, 1008, 1009, 1010]);

export function isRetryable(closeCode: number): boolean {
  if (closeCode >= 4400 && closeCode < 4500) return closeCode === 4408 || closeCode === 4429;
  return !FINAL_CLOSE_CODES.has(closeCode);
}

/** HTTP statuses of a refused `/ws` handshake or `/events` request that retrying cannot fix. */
export function isFinalStatus(status: number): boolean {
  return status >= 400 && status < 500 && status !== 408 && status !== 429;
}

/** Exponential backoff with jitter (half to all of the doubled wait), reset once a connection opens. */
export class Retry {
  private attempt = 0;
  private readonly initialMs: number;
  private readonly maxMs: number;

  constructor(backoff: Backoff = {}) {
    this.initialMs = backoff.initialMs ?? 500;
    this.maxMs = backoff.maxMs ?? 30_000;
  }

  next(): number {
    const ceiling = Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
    this.attempt += 1;
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  reset(): void {
    this.attempt = 0;
  }
}

/** The last `seq` delivered per channel; a message at or below it is a repeat and is dropped. */
export class Positions {
  private readonly seqs = new Map<string, number>();

  constructor(since: Readonly<Record<string, number>> = {}) {
    for (const [channel, seq] of Object.entries(since)) this.seqs.set(channel, seq);
  }

  get(channel: string): number | undefined {
    return this.seqs.get(channel);
  }

  /** Record `seq` for `channel` unless it is not past the position: true when the message is new. */
  advance(channel: string, seq: number): boolean {
    const held = this.seqs.get(channel);
    if (held !== undefined && seq <= held) return false;
    this.seqs.set(channel, seq);
    return true;
  }

  /** A position learned without a message (a `subscribed` frame, an event id); never moves one back. */
  learn(channel: string, seq: number): void {
    const held = this.seqs.get(channel);
    if (held === undefined || seq > held) this.seqs.set(channel, seq);
  }

  toRecord(): Record<string, number> {
    return Object.fromEntries(this.seqs);
  }
}

/** The injected constructor, else the global one (a browser's), else a TypeError naming what to pass. */
export function implementation<T>(injected: T | undefined, name: 'WebSocket' | 'EventSource', npm: string): T {
  const found = injected ?? (globalThis as Record<string, unknown>)[name];
  if (found === undefined) throw new TypeError(`no global ${name} here: pass one, such as ${name} from "${npm}"`);
  return found as T;
}

/** `path` on keel's origin, with `http` swapped for `ws` when `websocket` is set. */
export function endpoint(baseUrl: string | undefined, path: string, websocket: boolean): URL {
  const url = new URL(path, baseUrl ?? globalThis.location.href);
  if (websocket) url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url;
}

/** The credentials of one attempt: a ticket for the URL, or a bearer header. */
export async function credentials(auth: Auth): Promise<{ ticket?: string; authorization?: string }> {
  if (auth === 'cookie') return {};
  if ('ticket' in auth) return { ticket: await auth.ticket() };
  return { authorization: `Bearer ${await auth.bearer()}` };
}

/**
 * The connect-drop-wait loop both helpers run: `attempt` opens one connection and `adopt`s it; its events report,
 * through `drop`, how it ended, and events of a connection no longer current are ignored. A final `stop` (or
 * `close()`) settles `ended`.
 */
export class Lifecycle {
  private stopped = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private connection: { close(): void } | undefined;
  private settle!: (ended: Ended) => void;
  private readonly ended: Promise<Ended> = new Promise((resolve) => {
    this.settle = resolve;
  });
  readonly retry: Retry;

  constructor(
    private readonly options: RealtimeOptions,
    private readonly attempt: () => Promise<void>,
  ) {
    this.retry = new Retry(options.backoff);
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  adopt(connection: { close(): void }): void {
    this.connection = connection;
  }

  isCurrent(connection: object): boolean {
    return this.connection === connection;
  }

  /** Start the first attempt and hand out the subscription. */
  run(positions: Positions): Subscription {
    this.start();
    return {
      close: () => this.stop(1000, 'closed by the client'),
      ended: this.ended,
      positions: () => positions.toRecord(),
    };
  }

  private start(): void {
    if (this.stopped) return;
    this.attempt().catch((error: unknown) => {
      if (error instanceof AuthRefused) this.stop(4000 + error.status, error.message);
      else this.drop(error instanceof Error ? error.message : String(error));
    });
  }

  /** The current connection ended and may be tried again. */
  drop(reason: string): void {
    if (this.stopped || this.timer !== undefined) return;
    this.teardown();
    const delay = this.retry.next();
    this.options.onRetry?.(reason, delay);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.start();
    }, delay);
  }

  stop(code: number, reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.teardown();
    this.settle({ code, reason });
  }

  private teardown(): void {
    const current = this.connection;
    this.connection = undefined;
    current?.close();
  }
}
