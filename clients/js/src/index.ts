/**
 * The official client of the wsgate WebSocket gateway: one connection that reconnects,
 * resubscribes and recovers every stream with history by itself.
 *
 * @packageDocumentation
 */
export {
  Client,
  SUBPROTOCOL,
  type ClientEvents,
  type ClientOptions,
  type ClientState,
  type DisconnectInfo,
  type SessionInfo,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export { WsgateError, type ErrorCode } from "./errors.js";
export { backoffDelay, closeAction, type CloseAction } from "./reconnect.js";
export type { StreamPosition } from "./stream.js";
export {
  Subscription,
  type Push,
  type SubscribeOptions,
  type SubscribedInfo,
  type SubscriptionEvents,
  type SubscriptionState,
} from "./subscription.js";
