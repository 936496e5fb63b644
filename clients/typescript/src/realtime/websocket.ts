// `GET /ws` (SPEC §7) with automatic reconnect: every connection subscribes to each channel `since` the last
// `seq` delivered, so what was posted while it was down arrives once, in order, before the live messages.
import type { MessageRead } from '../generated/types.gen.js';
import {
  credentials,
  endpoint,
  implementation,
  isFinalStatus,
  isRetryable,
  Lifecycle,
  Positions,
  type RealtimeOptions,
  type Subscription,
} from './common.js';

/** What the helper uses of a WebSocket: the browser's own and the `ws` package both fit. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: 'open', listener: () => void): void;
  addEventListener(type: 'message', listener: (event: { data: unknown }) => void): void;
  addEventListener(type: 'close', listener: (event: { code: number; reason: string }) => void): void;
  addEventListener(type: 'error', listener: (event: object) => void): void;
}

/** The browser's `WebSocket`, or `ws`'s, whose third argument carries the bearer header. */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { headers: Record<string, string> },
) => WebSocketLike;

export interface WebSocketOptions extends RealtimeOptions {
  /** Defaults to `globalThis.WebSocket` (browsers); in Node 20 pass `WebSocket` from `ws`. */
  WebSocket?: WebSocketConstructor;
}

type ServerFrame =
  | { type: 'subscribed'; channel: string; last_seq: number }
  | { type: 'message'; channel: string; message: MessageRead }
  | { type: 'error'; code: string; detail: string }
  | { type: 'unsubscribed' | 'published' | 'pong' };

// `ws` names the status of a refused handshake in its error event; a browser tells nothing (there, a refused
// ticket request is what ends the helper)
const REFUSED_HANDSHAKE = /server response: (\d{3})/;

/** Follow `options.channels` over `/ws` until `close()` or a refusal that retrying cannot fix. */
export function subscribeWebSocket(options: WebSocketOptions): Subscription {
  const Impl = implementation(options.WebSocket, 'WebSocket', 'ws');
  const positions = new Positions(options.since);
  const lifecycle = new Lifecycle(options, attempt);

  async function attempt(): Promise<void> {
    const { ticket, authorization } = await credentials(options.auth);
    if (lifecycle.isStopped) return;
    const url = endpoint(options.baseUrl, '/ws', true);
    if (ticket !== undefined) url.searchParams.set('ticket', ticket);
    const ws =
      authorization === undefined
        ? new Impl(url.href)
        : new Impl(url.href, [], { headers: { Authorization: authorization } });
    lifecycle.adopt(ws);
    let refusedWith: number | undefined;
    ws.addEventListener('open', () => {
      if (!lifecycle.isCurrent(ws)) return;
      for (const channel of options.channels) {
        const since = positions.get(channel);
        ws.send(JSON.stringify(since === undefined ? { type: 'subscribe', channel } : { type: 'subscribe', channel, since }));
      }
      options.onOpen?.();
    });
    ws.addEventListener('message', (event) => {
      if (lifecycle.isCurrent(ws) && typeof event.data === 'string') receive(JSON.parse(event.data) as ServerFrame);
    });
    ws.addEventListener('error', (event) => {
      const match = REFUSED_HANDSHAKE.exec(String((event as { message?: unknown }).message));
      if (match?.[1] !== undefined) refusedWith = Number(match[1]);
    });
    ws.addEventListener('close', (event) => {
      if (!lifecycle.isCurrent(ws)) return;
      if (refusedWith !== undefined && isFinalStatus(refusedWith)) {
        lifecycle.stop(4000 + refusedWith, `handshake refused with ${refusedWith}`);
      } else if (!isRetryable(event.code)) {
        lifecycle.stop(event.code, event.reason);
      } else {
        lifecycle.drop(`closed with ${event.code}${event.reason ? `: ${event.reason}` : ''}`);
      }
    });
  }

  function receive(frame: ServerFrame): void {
    switch (frame.type) {
      case 'subscribed':
        lifecycle.retry.reset(); // this connection serves: the next drop waits the shortest time again
        // a channel followed live from now starts at the channel's end; one with a position replays from it
        if (positions.get(frame.channel) === undefined) positions.learn(frame.channel, frame.last_seq);
        break;
      case 'message':
        if (positions.advance(frame.channel, frame.message.seq)) options.onMessage(frame.message);
        break;
      case 'error':
        // only subscribes are sent: a refused one is retried when limited, and final otherwise (no such channel)
        if (frame.code === 'rate_limited') lifecycle.drop(frame.detail);
        else lifecycle.stop(frame.code === 'not_found' ? 4404 : 4400, frame.detail);
        break;
    }
  }

  return lifecycle.run(positions);
}
