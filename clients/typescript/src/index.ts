// The keel client: the generated REST SDK (functions named for the operation ids, types for every schema) and
// the hand-written realtime helpers.
export * from './generated/index.js';
export { createClient, createConfig } from './generated/client/index.js';
export type { Client, Config } from './generated/client/index.js';
export {
  AuthRefused,
  isRetryable,
  ticketsFrom,
  type Auth,
  type Backoff,
  type Ended,
  type RealtimeOptions,
  type Subscription,
} from './realtime/common.js';
export { subscribeWebSocket, type WebSocketConstructor, type WebSocketLike, type WebSocketOptions } from './realtime/websocket.js';
export {
  subscribeEvents,
  type EventSourceConstructor,
  type EventSourceInit,
  type EventSourceLike,
  type EventSourceOptions,
} from './realtime/events.js';
