// SPDX-License-Identifier: Apache-2.0
//
// What the client hands out: delivered events (nexus.v1.EventResponse with its payload as JSON),
// gap notices, and the event-type grammar and pattern rule of docs/PROTOCOL.md, so that the
// client can route one delivered event to every subscription of the connection it matches
// (the broker delivers an event once per connection).
import type { JsonObject } from "@bufbuild/protobuf";
import type { EventResponse, Gap as GapMessage } from "./gen/nexus_pb.js";

export type { JsonObject, JsonValue } from "@bufbuild/protobuf";

/** The states of an event type (docs/PROTOCOL.md, "Event types"). */
export type EventState =
  | "requested"
  | "started"
  | "stream"
  | "heartbeat"
  | "success"
  | "failed"
  | "completed"
  | "cancel"
  | "cancelled"
  | "timeout";

/** A request's terminal states: exactly one ends each request. */
export const TERMINAL_STATES: ReadonlySet<string> = new Set([
  "success",
  "failed",
  "cancelled",
  "timeout",
]);

/** A delivered event (or an emit's acknowledgement), typed by its payload data. */
export interface NexusEvent<TData extends JsonObject = JsonObject> {
  readonly kind: "event";
  eventId: string;
  eventType: string;
  /** The type's parts: `service:action:vN:state`. */
  service: string;
  action: string;
  version: number;
  state: EventState | string;
  campaignId: bigint;
  entityId: string;
  /** Per-campaign sequence number (0: not sequenced, e.g. heartbeats). */
  sequence: bigint;
  timestampUnixNanos: bigint;
  /** Lifecycle events: the request's event id. */
  correlationId: string;
  /** Stream events: the per-stream counter. */
  streamSeq: bigint;
  /** Failed lifecycle events: the error code. */
  code: string;
  message: string;
  /** metadata.global_context.user_id ("" if none). */
  userId: string;
  /** payload.data as JSON (undefined without one). */
  data: TData | undefined;
  /** payload.versioning as JSON. */
  versioning: JsonObject | undefined;
}

/** Events a subscription will not get (docs/PROTOCOL.md, "gap"); reason `reconnect` when the
 *  client reconnected and resubscribed without a replay (events in between may be missing). */
export interface Gap {
  readonly kind: "gap";
  campaignId: bigint;
  firstSequence: bigint;
  /** 0 when unknown (a reconnect). */
  lastSequence: bigint;
  dropped: bigint;
  reason: string;
}

/** An emit's acknowledgement. */
export interface Ack {
  eventId: string;
  eventType: string;
  campaignId: bigint;
  sequence: bigint;
  timestampUnixNanos: bigint;
  /** True when the broker recognised the event as a duplicate (nothing was delivered). */
  duplicate: boolean;
}

export interface ParsedType {
  service: string;
  action: string;
  version: number;
  state: string;
}

/** Splits `service:action:vN:state` (no validation beyond the four parts). */
export function parseEventType(type: string): ParsedType {
  const [service = "", action = "", v = "", state = ""] = type.split(":");
  return { service, action, version: Number(v.slice(1)) || 0, state };
}

/** Whether event type `type` matches subscription pattern `pattern` (each of the four segments
 *  equal or `*`; `*` alone matches every type). */
export function patternMatches(pattern: string, type: string): boolean {
  if (pattern === "*" || pattern === "") return true;
  const p = pattern.split(":");
  const t = type.split(":");
  if (p.length !== 4 || t.length !== 4) return false;
  return p.every((seg, i) => seg === "*" || seg === t[i]);
}

export function eventFromMessage<T extends JsonObject = JsonObject>(
  r: EventResponse,
): NexusEvent<T> {
  const t = parseEventType(r.eventType);
  return {
    kind: "event",
    eventId: r.eventId,
    eventType: r.eventType,
    service: t.service,
    action: t.action,
    version: t.version,
    state: t.state,
    campaignId: r.campaignId,
    entityId: r.entityId,
    sequence: r.sequence,
    timestampUnixNanos: r.timestampUnixNanos,
    correlationId: r.correlationId,
    streamSeq: r.streamSeq,
    code: r.code,
    message: r.message,
    userId: r.metadata?.globalContext?.userId ?? "",
    data: r.payload?.data as T | undefined,
    versioning: r.payload?.versioning,
  };
}

export function gapFromMessage(g: GapMessage): Gap {
  return {
    kind: "gap",
    campaignId: g.campaignId,
    firstSequence: g.firstSequence,
    lastSequence: g.lastSequence,
    dropped: g.dropped,
    reason: g.reason,
  };
}

export function ackFromMessage(r: EventResponse): Ack {
  return {
    eventId: r.eventId,
    eventType: r.eventType,
    campaignId: r.campaignId,
    sequence: r.sequence,
    timestampUnixNanos: r.timestampUnixNanos,
    duplicate: r.message === "duplicate",
  };
}
