// The realtime helpers' own logic against scripted sockets and streams (node --test): which closes are retried,
// what a reconnect resumes from, and that repeats are dropped. The end-to-end script proves the wiring.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  type EventSourceInit,
  isRetryable,
  type MessageRead,
  subscribeEvents,
  subscribeWebSocket,
  type Subscription,
  type WebSocketOptions,
} from '../src/index.js';

type Listener = (event: never) => void;

class Scripted {
  private readonly listeners = new Map<string, Listener[]>();
  closed = false;

  addEventListener(type: string, listener: Listener): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }

  emit(type: string, event: object = {}): void {
    for (const listener of this.listeners.get(type) ?? []) listener(event as never);
  }

  close(): void {
    this.closed = true;
  }
}

class FakeSocket extends Scripted {
  static made: FakeSocket[] = [];
  readonly sent: unknown[] = [];

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
    readonly options?: { headers: Record<string, string> },
  ) {
    super();
    FakeSocket.made.push(this);
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }

  deliver(seq: number): void {
    this.emit('message', { data: JSON.stringify({ type: 'message', channel: 'c1', message: message('c1', seq) }) });
  }
}

class FakeSource extends Scripted {
  static made: FakeSource[] = [];

  constructor(
    readonly url: string,
    readonly init?: EventSourceInit,
  ) {
    super();
    FakeSource.made.push(this);
  }

  deliver(channel: string, seq: number, id: string): void {
    this.emit('message', { data: JSON.stringify(message(channel, seq)), lastEventId: id });
  }
}

function message(channel: string, seq: number): MessageRead {
  const author = { id: 'u1', username: 'ada' };
  return { id: `m${seq}`, channel_id: channel, seq, author, body: `#${seq}`, created_at: '2026-01-01T00:00:00Z' };
}

const tick = (ms = 20) => new Promise((resolve) => setTimeout(resolve, ms));
const backoff = { initialMs: 1, maxMs: 1 };

/** A socket helper on a fresh set of scripted sockets; `options` override a cookie-authenticated default. */
function followOverSocket(options: Partial<WebSocketOptions> = {}): Subscription {
  FakeSocket.made = [];
  return subscribeWebSocket({
    baseUrl: 'http://keel.example',
    channels: ['c1'],
    auth: 'cookie',
    WebSocket: FakeSocket,
    onMessage: () => undefined,
    backoff,
    ...options,
  });
}

function last<T>(made: T[]): T {
  const item = made.at(-1);
  assert.ok(item !== undefined, 'nothing was constructed');
  return item;
}

test('close codes: shutdown, drops, restarts and rate limits are retried; refusals are not', () => {
  for (const code of [1000, 1001, 1006, 1011, 1012, 1013, 4408, 4429]) assert.equal(isRetryable(code), true, `${code}`);
  for (const code of [1002, 1008, 1009, 4400, 4401, 4403, 4404]) assert.equal(isRetryable(code), false, `${code}`);
});

test('a reconnected socket subscribes since the last seq delivered, and repeats are dropped', async () => {
  const seqs: number[] = [];
  const subscription = followOverSocket({
    baseUrl: 'https://keel.example',
    since: { c1: 0 },
    auth: { bearer: () => 'token' },
    onMessage: (m) => seqs.push(m.seq),
  });
  await tick();
  const first = last(FakeSocket.made);
  assert.equal(first.url, 'wss://keel.example/ws');
  assert.deepEqual(first.options, { headers: { Authorization: 'Bearer token' } });
  first.emit('open');
  assert.deepEqual(first.sent, [{ type: 'subscribe', channel: 'c1', since: 0 }]);
  for (const seq of [1, 2, 2, 3]) first.deliver(seq);
  first.emit('close', { code: 1012, reason: '' });
  await tick();

  const second = last(FakeSocket.made);
  assert.notEqual(second, first);
  second.emit('open');
  assert.deepEqual(second.sent, [{ type: 'subscribe', channel: 'c1', since: 3 }]);
  for (const seq of [3, 4]) second.deliver(seq);
  assert.deepEqual(seqs, [1, 2, 3, 4]);
  subscription.close();
  assert.deepEqual(await subscription.ended, { code: 1000, reason: 'closed by the client' });
  assert.equal(second.closed, true);
});

test('a channel followed live starts at the last_seq of its subscribed frame', async () => {
  const subscription = followOverSocket();
  await tick();
  const socket = last(FakeSocket.made);
  socket.emit('open');
  assert.deepEqual(socket.sent, [{ type: 'subscribe', channel: 'c1' }]);
  socket.emit('message', { data: JSON.stringify({ type: 'subscribed', channel: 'c1', last_seq: 41 }) });
  assert.deepEqual(subscription.positions(), { c1: 41 });
  subscription.close();
});

test('a revoked session (4401) ends the socket helper without another attempt', async () => {
  const subscription = followOverSocket();
  await tick();
  last(FakeSocket.made).emit('close', { code: 4401, reason: 'session revoked' });
  assert.deepEqual(await subscription.ended, { code: 4401, reason: 'session revoked' });
  await tick();
  assert.equal(FakeSocket.made.length, 1);
});

test('a handshake refused with 403 ends the socket helper; one refused with 503 is retried', async () => {
  const subscription = followOverSocket();
  await tick();
  const unavailable = last(FakeSocket.made);
  unavailable.emit('error', { message: 'Unexpected server response: 503' });
  unavailable.emit('close', { code: 1006, reason: '' });
  await tick();
  assert.equal(FakeSocket.made.length, 2);
  const forbidden = last(FakeSocket.made);
  forbidden.emit('error', { message: 'Unexpected server response: 403' });
  forbidden.emit('close', { code: 1006, reason: '' });
  assert.deepEqual(await subscription.ended, { code: 4403, reason: 'handshake refused with 403' });
});

test('a reconnected stream asks for every position in its last event id, with a fresh ticket', async () => {
  FakeSource.made = [];
  let tickets = 0;
  const seqs: string[] = [];
  const subscription = subscribeEvents({
    baseUrl: 'http://keel.example',
    channels: ['c1', 'c2'],
    auth: { ticket: async () => `t${(tickets += 1)}` },
    EventSource: FakeSource,
    onMessage: (m) => seqs.push(`${m.channel_id}:${m.seq}`),
    backoff,
  });
  await tick();
  const first = last(FakeSource.made);
  assert.equal(first.url, 'http://keel.example/events?channel=c1&channel=c2&ticket=t1');
  first.emit('open');
  first.deliver('c1', 5, 'c1:5,c2:9');
  first.deliver('c1', 5, 'c1:5,c2:9');
  first.emit('error');
  await tick();

  const second = last(FakeSource.made);
  assert.equal(first.closed, true);
  assert.equal(
    second.url,
    'http://keel.example/events?channel=c1&channel=c2&last_event_id=c1%3A5%2Cc2%3A9&ticket=t2',
  );
  second.deliver('c2', 10, 'c1:5,c2:10');
  assert.deepEqual(seqs, ['c1:5', 'c2:10']);
  second.emit('error', { code: 401 });
  assert.deepEqual(await subscription.ended, { code: 4401, reason: 'refused with 401' });
});
