// Compiled only (`tsc --noEmit`): a browser's own WebSocket and EventSource fit the helpers' constructor types.
import type { EventSourceConstructor, WebSocketConstructor } from '../src/index.js';

export const browserWebSocket: WebSocketConstructor = WebSocket;
export const browserEventSource: EventSourceConstructor = EventSource;
