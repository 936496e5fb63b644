// `GET /events` (SPEC §8) with automatic reconnect. The helper reconnects itself instead of leaving it to the
// EventSource: a ticket is single use, so the EventSource's own retry (same URL) would be refused. Every
// connection carries `last_event_id` built from the positions delivered so far, so nothing is missed or repeated.
import type { MessageRead } from '../generated/types.gen.js';
import {
  credentials,
  endpoint,
  implementation,
  isFinalStatus,
  Lifecycle,
  Positions,
  type RealtimeOptions,
  type Subscription,
} from './common.js';

/** What the helper uses of an EventSource: the browser's own and the `eventsource` package both fit. */
export interface EventSourceLike {
  close(): void;
  addEventListener(type: 'open', listener: () => void): void;
  addEventListener(type: 'message', listener: (event: { data: string; lastEventId: string }) => void): void;
  addEventListener(type: 'error', listener: (event: object) => void): void;
}

type FetchInit = Omit<RequestInit, 'headers'> & { headers: Record<string, string> };

export interface EventSourceInit {
  withCredentials?: boolean;
  /** The `eventsource` package's hook, used to send the bearer header; browsers ignore it. */
  fetch?: (url: string | URL, init: FetchInit) => Promise<Response>;
}

export type EventSourceConstructor = new (url: string, init?: EventSourceInit) => EventSourceLike;

export interface EventSourceOptions extends RealtimeOptions {
  /** Defaults to `globalThis.EventSource` (browsers); in Node 20 pass `EventSource` from `eventsource`. */
  EventSource?: EventSourceConstructor;
}

/** Follow `options.channels` over `/events` until `close()` or a refusal that retrying cannot fix. */
export function subscribeEvents(options: EventSourceOptions): Subscription {
  const Impl = implementation(options.EventSource, 'EventSource', 'eventsource');
  const positions = new Positions(options.since);
  const lifecycle = new Lifecycle(options, attempt);

  async function attempt(): Promise<void> {
    const { ticket, authorization } = await credentials(options.auth);
    if (lifecycle.isStopped) return;
    const url = endpoint(options.baseUrl, '/events', false);
    for (const channel of options.channels) url.searchParams.append('channel', channel);
    const resume = options.channels.flatMap((channel) => {
      const seq = positions.get(channel);
      return seq === undefined ? [] : [`${channel}:${seq}`];
    });
    if (resume.length > 0) url.searchParams.set('last_event_id', resume.join(','));
    if (ticket !== undefined) url.searchParams.set('ticket', ticket);
    const init: EventSourceInit =
      authorization !== undefined
        ? { fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, Authorization: authorization } }) }
        : { withCredentials: options.auth === 'cookie' };
    const stream = new Impl(url.href, init);
    lifecycle.adopt(stream);
    stream.addEventListener('open', () => {
      if (!lifecycle.isCurrent(stream)) return;
      lifecycle.retry.reset();
      options.onOpen?.();
    });
    stream.addEventListener('message', (event) => {
      if (!lifecycle.isCurrent(stream)) return;
      const message = JSON.parse(event.data) as MessageRead;
      const isNew = positions.advance(message.channel_id, message.seq);
      // the id holds the position in every followed channel, including ones with nothing delivered yet
      for (const pair of event.lastEventId.split(',')) {
        const colon = pair.lastIndexOf(':');
        if (colon > 0) positions.learn(pair.slice(0, colon), Number(pair.slice(colon + 1)));
      }
      if (isNew) options.onMessage(message);
    });
    stream.addEventListener('error', (event) => {
      if (!lifecycle.isCurrent(stream)) return;
      // `eventsource` gives the status of a refused request; a browser does not (a refused ticket ends it there)
      const status = (event as { code?: unknown }).code;
      if (typeof status === 'number' && isFinalStatus(status)) {
        lifecycle.stop(4000 + status, `refused with ${status}`);
      } else {
        lifecycle.drop(typeof status === 'number' ? `answered ${status}` : 'stream ended');
      }
    });
  }

  return lifecycle.run(positions);
}
