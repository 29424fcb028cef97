// SPDX-License-Identifier: Apache-2.0
//
// @nexus-broker/client: the Nexus event broker's client over WebSocket, for browsers and
// Node ≥ 20 (docs/PROTOCOL.md, "WebSocket"; client/js/README.md).
//
//   import { connect } from "@nexus-broker/client";
//   const nx = await connect({ url: "ws://127.0.0.1:7480" });
//   const sub = await nx.subscribe("order:*:v1:*", { campaign: 42 });
//   await nx.emit("order:placed:v1:completed", { total: 12 }, { campaign: 42 });
//   for await (const ev of sub) console.log(ev.sequence, ev.eventType, ev.data);
import { Client, type ConnectOptions } from "./client.js";

export {
  Client,
  RequestStream,
  Subscription,
  type Campaign,
  type ConnectOptions,
  type ConnectionState,
  type EmitOptions,
  type ReconnectOptions,
  type RequestOptions,
  type SubscribeOptions,
  type Welcome,
} from "./client.js";
export {
  AuthError,
  ClientClosed,
  ConnectionLost,
  NexusError,
  RequestFailed,
  TimeoutError,
} from "./errors.js";
export {
  TERMINAL_STATES,
  parseEventType,
  patternMatches,
  type Ack,
  type EventState,
  type Gap,
  type JsonObject,
  type JsonValue,
  type NexusEvent,
  type ParsedType,
} from "./events.js";
export type { StatsReply, ShardStats } from "./gen/nexus_pb.js";
export type { WebSocketConstructor, WebSocketLike } from "./transport.js";

/** Connects to nexusd's WebSocket listener and says hello (Client.connect). */
export function connect(options: ConnectOptions | string): Promise<Client> {
  return Client.connect(typeof options === "string" ? { url: options } : options);
}
