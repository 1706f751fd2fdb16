export { Fanline, FanlineError, Subscription } from "./client.js";
export type {
  ClientEvents,
  Credential,
  Disconnect,
  Options,
  Publication,
  Reset,
  State,
  Subscribed,
  SubscriptionError,
  SubscriptionEvents,
  Transport,
} from "./client.js";
export type { Listener } from "./emitter.js";
export type { PositionStore } from "./positions.js";
