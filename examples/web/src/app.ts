// SPDX-License-Identifier: Apache-2.0
//
// The dashboard of one campaign, live over WebSocket with @nexus-broker/client: its state
// (campaign:stream_state, pushed on every change), its analytics (campaign:stream_analytics,
// a sample a second), the event tail (a subscription to the campaign), and its media rooms with
// their peers (media:stream_rooms). Each stream is opened again after a reconnect.
// URL parameters: ?ws=ws://host:port/ (default: this page's host, port 7480) &campaign=42.
import {
  connect,
  type Client,
  type Gap,
  type JsonObject,
  type JsonValue,
  type NexusEvent,
} from "@nexus-broker/client";

const params = new URLSearchParams(location.search);
const wsUrl = params.get("ws") ?? `ws://${location.hostname || "127.0.0.1"}:7480/`;
const campaign = BigInt(params.get("campaign") ?? "42");
const TAIL_ROWS = 50;

const $ = (id: string): HTMLElement => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from the page`);
  return el;
};

function cell(text: string, cls?: string): HTMLTableCellElement {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function time(ms: JsonValue | undefined): string {
  return typeof ms === "number" && ms > 0 ? new Date(ms).toLocaleTimeString() : "never";
}

function show(v: JsonValue | undefined): string {
  return typeof v === "string" ? v : JSON.stringify(v);
}

// ---- panels ----------------------------------------------------------------------------------

function renderState(d: JsonObject): void {
  $("state-version").textContent = show(d.version);
  $("state-keys").textContent = show(d.keys);
  $("state-updated").textContent = time(d.last_updated_ms);
  const features = Array.isArray(d.features) ? d.features.map(String) : [];
  $("state-features").textContent = features.length ? features.join(", ") : "none";
  const body = $("state-table").querySelector("tbody") as HTMLTableSectionElement;
  body.replaceChildren();
  const state = (d.state ?? {}) as JsonObject;
  for (const [k, v] of Object.entries(state)) {
    const tr = document.createElement("tr");
    tr.dataset.key = k;
    tr.append(cell(k), cell(show(v), "value"));
    body.append(tr);
  }
}

const ANALYTICS: Array<[string, string]> = [
  ["subscribers", "subscribers"],
  ["events_per_second", "events / s"],
  ["sequence", "last sequence"],
  ["open_streams", "open streams"],
  ["active_sessions", "active sessions"],
  ["history_events", "history events"],
  ["changes", "state changes"],
  ["rejected", "rejected changes"],
];

function renderAnalytics(d: JsonObject): void {
  const body = $("analytics-table").querySelector("tbody") as HTMLTableSectionElement;
  body.replaceChildren();
  for (const [key, label] of ANALYTICS) {
    const tr = document.createElement("tr");
    tr.dataset.key = key;
    const v = d[key];
    tr.append(cell(label), cell(typeof v === "number" ? String(Math.round(v * 10) / 10) : show(v), "num"));
    body.append(tr);
  }
}

/** Rooms and their peers, kept from the stream_rooms snapshot and the updates after it. */
const rooms = new Map<string, string[]>();

function renderRooms(): void {
  const ul = $("rooms");
  ul.replaceChildren();
  if (rooms.size === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "no rooms";
    ul.append(li);
    return;
  }
  for (const [ctx, peers] of [...rooms].sort(([a], [b]) => a.localeCompare(b))) {
    const li = document.createElement("li");
    li.dataset.room = ctx;
    const name = document.createElement("b");
    name.textContent = `${ctx} (${peers.length}) `;
    li.append(name);
    for (const p of peers) {
      const span = document.createElement("span");
      span.className = "peer";
      span.dataset.peer = p;
      span.textContent = p;
      li.append(span);
    }
    ul.append(li);
  }
}

function roomUpdate(d: JsonObject): void {
  const ctx = String(d.context_id ?? "");
  const peer = typeof d.peer_id === "string" ? d.peer_id : undefined;
  switch (d.action) {
    case "snapshot":
      rooms.clear();
      for (const r of (Array.isArray(d.rooms) ? d.rooms : []) as JsonObject[])
        rooms.set(String(r.context_id), Array.isArray(r.peers) ? r.peers.map(String) : []);
      break;
    case "room_created":
      if (!rooms.has(ctx)) rooms.set(ctx, []);
      break;
    case "room_closed":
      rooms.delete(ctx);
      break;
    case "peer_joined":
      if (peer) rooms.set(ctx, [...(rooms.get(ctx) ?? []).filter((p) => p !== peer), peer]);
      break;
    case "peer_left":
      if (peer) rooms.set(ctx, (rooms.get(ctx) ?? []).filter((p) => p !== peer));
      break;
    default:
      return;
  }
  renderRooms();
}

function addTail(item: NexusEvent | Gap): void {
  const body = $("tail").querySelector("tbody") as HTMLTableSectionElement;
  const tr = document.createElement("tr");
  if (item.kind === "gap") {
    tr.className = "gap";
    tr.append(cell("gap"), cell(`${item.reason}: from ${item.firstSequence}`));
  } else {
    tr.dataset.type = item.eventType;
    tr.append(
      cell(String(item.sequence), "num"),
      cell(item.eventType),
      cell(item.entityId),
      cell(item.userId),
      cell(new Date(Number(item.timestampUnixNanos / 1000000n)).toLocaleTimeString()),
    );
  }
  body.prepend(tr);
  while (body.rows.length > TAIL_ROWS) body.deleteRow(body.rows.length - 1);
}

// ---- streams ---------------------------------------------------------------------------------

/** The dashboard's own requests: their stream events are in the campaign's sequence too, and
 *  the tail leaves them out. */
const own = new Set<string>();

function opened(client: Client): Promise<void> {
  return new Promise((resolve) => {
    if (client.state === "open") return resolve();
    const on = () => {
      if (client.state === "open" || client.state === "closed") {
        client.removeEventListener("state", on);
        resolve();
      }
    };
    client.addEventListener("state", on);
  });
}

/** Follows a stream request, handing each stream event's data to `render`; opens it again
 *  whenever it ends (a reconnect ends every request) until the client closes. */
async function follow(client: Client, type: string, payload: JsonObject, render: (d: JsonObject) => void) {
  while (client.state !== "closed") {
    const req = client.request(type, payload, { campaign });
    own.add(req.eventId);
    try {
      for await (const ev of req) if (ev.state === "stream" && ev.data) render(ev.data);
    } catch (e) {
      console.warn(`${type}:`, e);
    }
    own.delete(req.eventId);
    await new Promise((r) => setTimeout(r, 250));
    await opened(client);
  }
}

async function tail(client: Client): Promise<void> {
  while (client.state !== "closed") {
    try {
      const sub = await client.subscribe("*", { campaign });
      for await (const item of sub) {
        if (item.kind === "event" && (own.has(item.correlationId) || item.state === "heartbeat"))
          continue;
        addTail(item);
      }
    } catch (e) {
      console.warn("tail:", e);
    }
    await new Promise((r) => setTimeout(r, 250));
    await opened(client);
  }
}

async function main(): Promise<void> {
  $("campaign").textContent = String(campaign);
  $("broker").textContent = wsUrl;
  const status = $("status");
  let client: Client | undefined;
  while (!client) {
    try {
      client = await connect({ url: wsUrl, clientName: "nexus-web-dashboard" });
    } catch (e) {
      status.textContent = `not connected (${e instanceof Error ? e.message : e}); retrying`;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  const c = client;
  const setStatus = () => {
    status.textContent = c.state;
    status.dataset.state = c.state;
  };
  c.addEventListener("state", setStatus);
  setStatus();
  void follow(c, "campaign:stream_state:v1", { min_interval_ms: 50 }, renderState);
  void follow(c, "campaign:stream_analytics:v1", { interval_ms: 1000 }, renderAnalytics);
  void follow(c, "media:stream_rooms:v1", {}, roomUpdate);
  void tail(c);
}

void main();
