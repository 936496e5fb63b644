// End-to-end use of the SDK against a live `keel serve`, driven by tests/clients/test_typescript_sdk.py:
// node dist/test/e2e.js <base url>. It prints one JSON line per step on stdout; after "ready" the test restarts
// the server, posts messages elsewhere while this side cannot connect, and writes the newest seq on stdin.
import { createInterface } from 'node:readline';
import { EventSource } from 'eventsource';
import WebSocket from 'ws';

import * as keel from '../src/index.js';

const baseUrl = process.argv[2];
if (baseUrl === undefined) throw new Error('usage: e2e.js <base url>');
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const TIMEOUT_MS = 30_000;

function emit(event: string, detail: object): void {
  process.stdout.write(`${JSON.stringify({ event, ...detail })}\n`);
}

async function until(what: string, done: () => boolean): Promise<void> {
  const deadline = Date.now() + TIMEOUT_MS;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A helper's record: every seq delivered, in delivery order, and how often it connected or waited. */
interface Received {
  seqs: number[];
  opens: number;
  retries: string[];
}

function recorder(): Received & { onMessage: (m: keel.MessageRead) => void; onOpen: () => void; onRetry: (reason: string) => void } {
  const record: Received = { seqs: [], opens: 0, retries: [] };
  return Object.assign(record, {
    onMessage: (message: keel.MessageRead) => void record.seqs.push(message.seq),
    onOpen: () => void (record.opens += 1),
    onRetry: (reason: string) => void record.retries.push(reason),
  });
}

const username = 'ts_sdk';
const password = 'correct horse battery';
const anonymous = keel.createClient({ baseUrl });
const { data: user } = await keel.usersRegister({
  client: anonymous,
  body: { username, email: 'ts_sdk@example.com', password },
  throwOnError: true,
});
const { data: tokens } = await keel.authToken({ client: anonymous, body: { username, password }, throwOnError: true });
const client = keel.createClient({ baseUrl, auth: () => tokens.access_token });
const { data: me } = await keel.usersMe({ client, throwOnError: true });
const { data: channel } = await keel.channelsCreateChannel({ client, body: { name: 'sdk' }, throwOnError: true });
const path = { channel_id: channel.id };

async function post(body: string): Promise<number> {
  const { data } = await keel.channelsPostMessage({ client, path, body: { body }, throwOnError: true });
  return data.seq;
}

for (const body of ['one', 'two', 'three']) await post(body);
const { data: v1 } = await keel.v1ChannelsListMessages({ client, path, query: { limit: 10 }, throwOnError: true });
const { data: first } = await keel.channelsListMessages({ client, path, query: { limit: 2 }, throwOnError: true });
const { data: rest } = await keel.channelsListMessages({
  client,
  path,
  query: { limit: 2, cursor: first.next_cursor ?? undefined },
  throwOnError: true,
});
emit('rest', {
  user: user.username,
  me: me.id === user.id,
  v1: v1.map((m) => m.seq),
  v2: [first.data.map((m) => m.seq), rest.data.map((m) => m.seq)],
  last_cursor: rest.next_cursor,
});

const backoff = { initialMs: 100, maxMs: 1000 };
const viaSocket = recorder();
const socket = keel.subscribeWebSocket({
  baseUrl,
  channels: [channel.id],
  since: { [channel.id]: 0 },
  auth: keel.ticketsFrom(client),
  WebSocket,
  backoff,
  ...viaSocket,
});
const viaEvents = recorder();
const events = keel.subscribeEvents({
  baseUrl,
  channels: [channel.id],
  since: { [channel.id]: 0 },
  auth: { bearer: () => tokens.access_token },
  EventSource,
  backoff,
  ...viaEvents,
});
const hasAll = (newest: number) => () => [viaSocket, viaEvents].every((r) => r.seqs.includes(newest));

await until('the replay of 1-3', hasAll(3));
await until('a live message', hasAll(await post('four')));
emit('ready', { channel: channel.id, access_token: tokens.access_token });

const posted = await lines.next();
if (posted.done === true) throw new Error('stdin closed before the restart was reported');
await until('the messages posted while disconnected', hasAll(Number(posted.value)));
await until('a live message after the reconnect', hasAll(await post('after')));

await keel.authLogout({ client, throwOnError: true });
const ended = await Promise.race([
  Promise.all([socket.ended, events.ended]),
  new Promise<never>((_, reject) => setTimeout(() => reject(new Error('still open after logout')), TIMEOUT_MS)),
]);
emit('done', {
  ws: { ...viaSocket, ended: ended[0], positions: socket.positions() },
  sse: { ...viaEvents, ended: ended[1], positions: events.positions() },
});
process.exit(0);
