// SPDX-License-Identifier: Apache-2.0
//
// The Nexus client over WebSocket (docs/PROTOCOL.md, "WebSocket"): one connection to nexusd's
// --ws-listen port, each binary message one nexus.v1.Frame. It says hello (with credentials),
// answers the broker's pings, matches replies to requests by correlation, routes delivered
// events to the subscriptions and requests they belong to, and reconnects (hello again,
// subscriptions again) when the connection is lost. One API in browsers and Node ≥ 20.
import { create, fromBinary, toBinary, type JsonObject } from "@bufbuild/protobuf";
import { MetadataSchema, PayloadSchema } from "./gen/common_pb.js";
import {
  EventRequestSchema,
  FrameSchema,
  HelloSchema,
  PingSchema,
  PongSchema,
  StatsRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeSchema,
  type EventRequest,
  type Frame,
  type StatsReply,
} from "./gen/nexus_pb.js";
import {
  AuthError,
  ClientClosed,
  ConnectionLost,
  NexusError,
  RequestFailed,
  TimeoutError,
} from "./errors.js";
import {
  TERMINAL_STATES,
  ackFromMessage,
  eventFromMessage,
  gapFromMessage,
  parseEventType,
  patternMatches,
  type Ack,
  type Gap,
  type NexusEvent,
} from "./events.js";
import { EventQueue } from "./queue.js";
import { openSocket, webSocketClass, type WebSocketConstructor, type WebSocketLike } from "./transport.js";

/** A campaign id: int64 on the wire; numbers above 2^53 must be given as bigint or string. */
export type Campaign = bigint | number | string;

export interface ReconnectOptions {
  /** First wait before reconnecting (doubles up to maxDelayMs; with jitter). Default 250. */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** Give up (the client closes) after this many failed attempts in a row. Default: never. */
  maxAttempts?: number;
}

export interface ConnectOptions {
  /** ws://host:port or wss://host:port of nexusd's --ws-listen. */
  url: string;
  /** The account (docs/SECURITY.md) and its token, or the broker's shared --token. */
  user?: string;
  token?: string;
  /** Names the publisher's duplicate window: a retry after a reconnect is recognised. */
  clientName?: string;
  /** Bound on the connect, the hello and every reply. Default 10000. */
  timeoutMs?: number;
  /** Reconnect after a lost connection (default true). */
  reconnect?: boolean | ReconnectOptions;
  /** Items a subscription or request may hold unread (default 100000). */
  maxQueue?: number;
  /** Another WebSocket implementation. */
  WebSocket?: WebSocketConstructor;
  /** Node: options for the `ws` package (e.g. `{ ca }` for wss with a private CA). */
  nodeOptions?: unknown;
}

export interface EmitOptions {
  campaign?: Campaign;
  /** Default: a fresh UUIDv4 made by the client, so that a retry is a recognised duplicate. */
  eventId?: string;
  entityId?: string;
  /** metadata.global_context.user_id (with accounts the broker stamps it). */
  userId?: string;
  /** metadata.global_context.correlation_id. */
  correlationId?: string;
  /** payload.versioning. */
  versioning?: JsonObject;
}

export interface SubscribeOptions {
  /** The campaign; 0 (default) is every campaign. */
  campaign?: Campaign;
  /** Only events of this user. */
  userId?: string;
  /** Replay from this sequence first (a broker with --data-dir). */
  fromSequence?: bigint | number;
  /** After a reconnect, resubscribe from the last sequence seen + 1 (needs --data-dir and one
   *  campaign); otherwise the subscription resumes live and yields a `reconnect` gap. */
  resume?: boolean;
  /** Aborting unsubscribes and ends the iteration. */
  signal?: AbortSignal;
}

export interface RequestOptions extends EmitOptions {
  /** Aborting cancels the request: the broker ends it with `cancelled`. */
  signal?: AbortSignal;
}

export interface Welcome {
  protocolVersion: number;
  serverVersion: string;
  shardCount: number;
  maxFrameBytes: number;
  connectionId: bigint;
  shardId: number;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

type Body = Frame["body"];

interface Pending {
  expect: string;
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

function toCampaign(c: Campaign | undefined): bigint {
  return c === undefined ? 0n : BigInt(c);
}

/** A UUIDv4 from getRandomValues (crypto.randomUUID needs a secure context). */
function uuid4(): string {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  b[6] = ((b[6] as number) & 0x0f) | 0x40;
  b[8] = ((b[8] as number) & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function errorFor(code: string, message: string): NexusError {
  return code === "unauthorized" || code === "permission_denied"
    ? new AuthError(code, message)
    : new NexusError(code, message);
}

/** A subscription: an async iterator of the events (and gaps) it matches. */
export class Subscription implements AsyncIterable<NexusEvent | Gap> {
  /** The broker's id (changes when the client resubscribes after a reconnect). */
  id = 0n;
  readonly campaign: bigint;
  readonly patterns: readonly string[];
  readonly userId: string;
  readonly resume: boolean;
  /** The last sequence number delivered (0: none yet). */
  lastSequence = 0n;
  readonly #queue: EventQueue<NexusEvent | Gap>;
  readonly #client: Client;

  /** @internal */
  constructor(client: Client, patterns: string[], o: SubscribeOptions, limit: number) {
    this.#client = client;
    this.patterns = patterns;
    this.campaign = toCampaign(o.campaign);
    this.userId = o.userId ?? "";
    this.resume = o.resume ?? false;
    this.#queue = new EventQueue(limit, () => void this.unsubscribe().catch(() => undefined));
  }

  /** @internal Whether a delivered event belongs here. */
  matches(ev: NexusEvent): boolean {
    if (this.campaign !== 0n && ev.campaignId !== this.campaign) return false;
    if (this.userId && ev.userId !== this.userId) return false;
    return this.patterns.length === 0 || this.patterns.some((p) => patternMatches(p, ev.eventType));
  }

  /** @internal */
  push(item: NexusEvent | Gap): void {
    if (item.kind === "event" && item.sequence > 0n && this.campaign !== 0n)
      this.lastSequence = item.sequence;
    this.#queue.push(item);
  }

  /** @internal */
  end(error?: Error): void {
    this.#queue.end(error);
  }

  get closed(): boolean {
    return this.#queue.ended;
  }

  /** The next event or gap; rejects with TimeoutError after timeoutMs (if given). */
  async next(timeoutMs?: number): Promise<NexusEvent | Gap> {
    const p = this.#queue.next();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const t =
      timeoutMs === undefined
        ? null
        : new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new TimeoutError("subscription", timeoutMs)), timeoutMs);
          });
    try {
      const r = await (t ? Promise.race([p, t]) : p);
      if (r.done) throw new ClientClosed("the subscription ended");
      return r.value;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops the subscription: no event of it is delivered after this resolves. */
  async unsubscribe(): Promise<void> {
    this.#queue.end();
    await this.#client._unsubscribe(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<NexusEvent | Gap> {
    return this.#queue;
  }
}

/** A request and its lifecycle (docs/PROTOCOL.md, "Requests"): an async iterator of its events
 *  (started, stream, heartbeat, then the terminal one), ending after the terminal event. */
export class RequestStream<T extends JsonObject = JsonObject>
  implements AsyncIterable<NexusEvent<T>>
{
  readonly eventId: string;
  readonly eventType: string;
  readonly campaign: bigint;
  /** The terminal event (success, failed, cancelled or timeout). */
  readonly done: Promise<NexusEvent<T>>;
  /** @internal */
  readonly queue: EventQueue<NexusEvent<T>>;
  #settle!: { resolve: (e: NexusEvent<T>) => void; reject: (e: Error) => void };
  readonly #client: Client;
  #cancelled = false;

  /** @internal */
  constructor(client: Client, eventType: string, eventId: string, campaign: bigint, limit: number) {
    this.#client = client;
    this.eventType = eventType;
    this.eventId = eventId;
    this.campaign = campaign;
    this.queue = new EventQueue(limit, () => void this.cancel().catch(() => undefined));
    this.done = new Promise((resolve, reject) => (this.#settle = { resolve, reject }));
    this.done.catch(() => undefined); /* awaited or not: never an unhandled rejection */
  }

  /** @internal */
  push(ev: NexusEvent<T>): void {
    this.queue.push(ev);
    if (TERMINAL_STATES.has(ev.state)) {
      this.queue.end();
      this.#settle.resolve(ev);
      this.#client._requestEnded(this);
    }
  }

  /** @internal */
  fail(error: Error): void {
    this.queue.end(error);
    this.#settle.reject(error);
    this.#client._requestEnded(this);
  }

  /** Asks the broker to cancel the request; it then ends with `cancelled`. */
  async cancel(): Promise<void> {
    if (this.#cancelled || this.queue.ended) return;
    this.#cancelled = true;
    const t = parseEventType(this.eventType);
    await this.#client
      .emit(`${t.service}:${t.action}:v${t.version}:cancel`, undefined, {
        campaign: this.campaign,
        correlationId: this.eventId,
      })
      .catch((e: unknown) => {
        /* unknown_request: it ended meanwhile */
        if (!(e instanceof NexusError) || e.code !== "unknown_request") throw e;
      });
  }

  [Symbol.asyncIterator](): AsyncIterator<NexusEvent<T>> {
    return this.queue;
  }
}

export class Client extends EventTarget {
  readonly options: Readonly<ConnectOptions>;
  welcome: Welcome | undefined;
  #state: ConnectionState = "connecting";
  #ws: WebSocketLike | undefined;
  #nextCorrelation = 1n;
  readonly #pending = new Map<bigint, Pending>();
  readonly #subs = new Set<Subscription>();
  readonly #requests = new Map<string, RequestStream>();
  readonly #clientName: string;
  readonly #timeoutMs: number;
  readonly #limit: number;
  #openWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  #userClosed = false;

  private constructor(options: ConnectOptions) {
    super();
    this.options = options;
    this.#clientName = options.clientName ?? `nexus-js-${uuid4().slice(0, 8)}`;
    this.#timeoutMs = options.timeoutMs ?? 10000;
    this.#limit = options.maxQueue ?? 100000;
  }

  /** Connects and says hello. Rejects (AuthError for refused credentials) if the first
   *  connection fails; later losses are reconnected (options.reconnect). */
  static async connect(options: ConnectOptions): Promise<Client> {
    const c = new Client(options);
    await c.#open();
    c.#setState("open");
    return c;
  }

  get state(): ConnectionState {
    return this.#state;
  }

  // ---- the connection -------------------------------------------------------------------

  async #open(): Promise<void> {
    const o = this.options;
    const WS = await webSocketClass(o.WebSocket, o.nodeOptions);
    const ws = await openSocket(WS, o.url, ["nexus.v1"], o.nodeOptions, this.#timeoutMs);
    this.#ws = ws;
    ws.onmessage = (ev) => this.#onMessage(ev.data);
    ws.onclose = (ev) => this.#onClose(ws, ev.code, ev.reason);
    ws.onerror = () => undefined;
    const hello = create(HelloSchema, {
      protocolVersion: 1,
      token: o.token ?? "",
      clientName: this.#clientName,
      user: o.user ?? "",
    });
    try {
      const f = await this.#call({ case: "hello", value: hello }, "welcome");
      if (f.body.case === "welcome") {
        const w = f.body.value;
        this.welcome = {
          protocolVersion: w.protocolVersion,
          serverVersion: w.serverVersion,
          shardCount: w.shardCount,
          maxFrameBytes: w.maxFrameBytes,
          connectionId: w.connectionId,
          shardId: w.shardId,
        };
      }
    } catch (e) {
      ws.onclose = null;
      ws.close();
      this.#ws = undefined;
      throw e;
    }
  }

  #setState(s: ConnectionState): void {
    if (this.#state === s) return;
    this.#state = s;
    if (s === "open") for (const w of this.#openWaiters.splice(0)) w.resolve();
    if (s === "closed")
      for (const w of this.#openWaiters.splice(0)) w.reject(new ClientClosed());
    this.dispatchEvent(new CustomEvent("state", { detail: s }));
  }

  /** Resolves once the connection is open (waits out a reconnect, within the timeout). */
  #whenOpen(): Promise<void> {
    if (this.#state === "open") return Promise.resolve();
    if (this.#state === "closed") return Promise.reject(new ClientClosed());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#openWaiters = this.#openWaiters.filter((w) => w !== waiter);
        reject(new ConnectionLost(`not reconnected within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.#openWaiters.push(waiter);
    });
  }

  #onClose(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.#ws) return;
    this.#ws = undefined;
    const lost = new ConnectionLost(`the connection closed (code ${code}${reason ? `: ${reason}` : ""})`);
    for (const [corr, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(lost);
      this.#pending.delete(corr);
    }
    /* The broker cancels a disconnected requester's requests: they are over. */
    for (const r of [...this.#requests.values()]) r.fail(lost);
    if (this.#userClosed || this.options.reconnect === false) {
      for (const s of this.#subs) s.end(this.#userClosed ? undefined : lost);
      this.#subs.clear();
      this.#setState("closed");
      return;
    }
    this.#setState("reconnecting");
    void this.#reconnect();
  }

  async #reconnect(): Promise<void> {
    const r = typeof this.options.reconnect === "object" ? this.options.reconnect : {};
    let delay = r.initialDelayMs ?? 250;
    const maxDelay = r.maxDelayMs ?? 5000;
    const maxAttempts = r.maxAttempts ?? Infinity;
    for (let attempt = 1; !this.#userClosed; attempt++) {
      await new Promise((res) => setTimeout(res, delay * (0.5 + Math.random() / 2)));
      if (this.#userClosed) break;
      try {
        await this.#open();
        this.#setState("open");
        await this.#resubscribe();
        return;
      } catch (e) {
        if (e instanceof AuthError || attempt >= maxAttempts) {
          const err = e instanceof Error ? e : new ConnectionLost(String(e));
          for (const s of this.#subs) s.end(err);
          this.#subs.clear();
          this.#setState("closed");
          return;
        }
        delay = Math.min(delay * 2, maxDelay);
      }
    }
  }

  /** After a reconnect: every subscription again (from where it was, with `resume`). */
  async #resubscribe(): Promise<void> {
    for (const s of [...this.#subs]) {
      const from = s.resume && s.campaign !== 0n && s.lastSequence > 0n ? s.lastSequence + 1n : 0n;
      let id: bigint | undefined;
      if (from) id = await this.#sendSubscribe(s, from).catch(() => undefined);
      if (id === undefined) {
        id = await this.#sendSubscribe(s, 0n);
        s.push({
          kind: "gap",
          campaignId: s.campaign,
          firstSequence: s.lastSequence + 1n,
          lastSequence: 0n,
          dropped: 0n,
          reason: "reconnect",
        });
      }
      s.id = id;
    }
  }

  // ---- frames -----------------------------------------------------------------------------

  #send(correlation: bigint, body: Body): void {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) throw new ConnectionLost();
    const bytes = toBinary(FrameSchema, create(FrameSchema, { correlation, body }));
    const max = this.welcome?.maxFrameBytes ?? 4096;
    if (bytes.length > max)
      throw new NexusError(
        "frame_too_large",
        `a frame of ${bytes.length} bytes exceeds the broker's max_frame_bytes ${max}`,
      );
    ws.send(bytes);
  }

  /** Sends body with a fresh correlation and waits for the reply of kind `expect`. */
  #call(body: Body, expect: string): Promise<Frame> {
    const correlation = this.#nextCorrelation++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(correlation);
        reject(new TimeoutError(body.case ?? "frame", this.#timeoutMs));
      }, this.#timeoutMs);
      this.#pending.set(correlation, { expect, resolve, reject, timer });
      try {
        this.#send(correlation, body);
      } catch (e) {
        clearTimeout(timer);
        this.#pending.delete(correlation);
        reject(e);
      }
    });
  }

  #onMessage(data: unknown): void {
    if (!(data instanceof ArrayBuffer)) return; /* the broker sends binary messages only */
    let f: Frame;
    try {
      f = fromBinary(FrameSchema, new Uint8Array(data));
    } catch {
      this.#ws?.close(1007, "undecodable frame");
      return;
    }
    const b = f.body;
    switch (b.case) {
      case "event":
        this.#deliver(eventFromMessage(b.value));
        return;
      case "gap": {
        const g = gapFromMessage(b.value);
        for (const s of this.#subs) if (s.campaign === 0n || s.campaign === g.campaignId) s.push(g);
        return;
      }
      case "ping":
        try {
          this.#send(f.correlation, { case: "pong", value: create(PongSchema, { nonce: b.value.nonce }) });
        } catch {
          /* closing */
        }
        return;
      case "goaway":
        this.dispatchEvent(new CustomEvent("goaway", { detail: b.value.reason }));
        return;
      default:
        break;
    }
    const p = f.correlation ? this.#pending.get(f.correlation) : undefined;
    if (!p) {
      if (b.case === "error")
        this.dispatchEvent(new CustomEvent("error", { detail: errorFor(b.value.code, b.value.message) }));
      return;
    }
    this.#pending.delete(f.correlation);
    clearTimeout(p.timer);
    if (b.case === "error") p.reject(errorFor(b.value.code, b.value.message));
    else if (b.case === p.expect) p.resolve(f);
    else p.reject(new NexusError("unexpected_reply", `expected ${p.expect}, got ${b.case}`));
  }

  /** A delivered event: to its request (lifecycle events carry its id), and to every
   *  subscription it matches (the broker delivers an event once per connection). Events only
   *  the requester gets (heartbeats, private streams: sequence 0) stay with the request. */
  #deliver(ev: NexusEvent): void {
    const r = ev.correlationId ? this.#requests.get(ev.correlationId) : undefined;
    if (r) r.push(ev);
    if (r && ev.sequence === 0n) return;
    for (const s of this.#subs) if (s.matches(ev)) s.push(ev);
  }

  // ---- the API ------------------------------------------------------------------------------

  #emitMessage(type: string, data: JsonObject | undefined, o: EmitOptions): EventRequest {
    const md =
      o.userId || o.correlationId
        ? create(MetadataSchema, {
            globalContext: { userId: o.userId ?? "", correlationId: o.correlationId ?? "" },
          })
        : undefined;
    const payload =
      data || o.versioning
        ? create(PayloadSchema, { data, versioning: o.versioning })
        : undefined;
    return create(EventRequestSchema, {
      eventId: o.eventId ?? uuid4(),
      eventType: type,
      entityId: o.entityId ?? "",
      campaignId: toCampaign(o.campaign),
      metadata: md,
      payload,
    });
  }

  /** Emits an event and resolves with the broker's acknowledgement (sequence, duplicate). */
  async emit(type: string, data?: JsonObject, options: EmitOptions = {}): Promise<Ack> {
    await this.#whenOpen();
    const f = await this.#call({ case: "emit", value: this.#emitMessage(type, data, options) }, "emitAck");
    if (f.body.case !== "emitAck") throw new NexusError("unexpected_reply", "no emit_ack");
    return ackFromMessage(f.body.value);
  }

  /** Emits without waiting for an acknowledgement (errors arrive as "error" events). */
  publish(type: string, data?: JsonObject, options: EmitOptions = {}): void {
    if (this.#state !== "open") throw new ConnectionLost();
    this.#send(0n, { case: "emit", value: this.#emitMessage(type, data, options) });
  }

  async #sendSubscribe(s: Subscription, from: bigint): Promise<bigint> {
    const md = s.userId ? create(MetadataSchema, { globalContext: { userId: s.userId } }) : undefined;
    const f = await this.#call(
      {
        case: "subscribe",
        value: create(SubscribeRequestSchema, {
          eventTypes: [...s.patterns],
          campaignId: s.campaign,
          metadata: md,
          fromSequence: from,
        }),
      },
      "subscribeAck",
    );
    return f.body.case === "subscribeAck" ? f.body.value.subscriptionId : 0n;
  }

  /** Subscribes to a campaign's events of the given type patterns (`*` or [] for every type).
   *  Resolves once the broker routes them: an event emitted after that is delivered. */
  async subscribe(patterns: string | string[] = [], options: SubscribeOptions = {}): Promise<Subscription> {
    await this.#whenOpen();
    const s = new Subscription(this, typeof patterns === "string" ? [patterns] : patterns, options, this.#limit);
    this.#subs.add(s); /* before the ack: a replay (fromSequence) arrives before it */
    try {
      s.id = await this.#sendSubscribe(s, BigInt(options.fromSequence ?? 0));
    } catch (e) {
      this.#subs.delete(s);
      throw e;
    }
    options.signal?.addEventListener("abort", () => void s.unsubscribe().catch(() => undefined), {
      once: true,
    });
    return s;
  }

  /** @internal */
  async _unsubscribe(s: Subscription): Promise<void> {
    if (!this.#subs.delete(s) || this.#state !== "open") return;
    await this.#call(
      { case: "unsubscribe", value: create(UnsubscribeSchema, { subscriptionId: s.id }) },
      "subscribeAck",
    );
  }

  /** @internal */
  _requestEnded(r: { readonly eventId: string }): void {
    if ((this.#requests.get(r.eventId) as unknown) === r) this.#requests.delete(r.eventId);
  }

  /** Makes a request (`service:action:vN`, or the full `...:requested` type) and follows its
   *  lifecycle: iterate the returned stream for its events; `done` is the terminal one. */
  request<T extends JsonObject = JsonObject>(
    type: string,
    data?: JsonObject,
    options: RequestOptions = {},
  ): RequestStream<T> {
    const full = type.endsWith(":requested") ? type : `${type}:requested`;
    const eventId = options.eventId ?? uuid4();
    const r = new RequestStream<T>(this, full, eventId, toCampaign(options.campaign), this.#limit);
    this.#requests.set(eventId, r as unknown as RequestStream);
    const signal = options.signal;
    const start = async () => {
      if (signal?.aborted) throw new NexusError("aborted", "the request was aborted before it started");
      await this.emit(full, data, { ...options, eventId });
      signal?.addEventListener("abort", () => void r.cancel().catch(() => undefined), { once: true });
    };
    start().catch((e: unknown) => r.fail(e instanceof Error ? e : new NexusError("internal", String(e))));
    return r;
  }

  /** A request whose result is all that matters: resolves with the `success` event's payload
   *  data, rejects with RequestFailed for any other end. */
  async call<T extends JsonObject = JsonObject>(
    type: string,
    data?: JsonObject,
    options: RequestOptions = {},
  ): Promise<T | undefined> {
    const ev = await this.request<T>(type, data, options).done;
    if (ev.state !== "success") throw new RequestFailed(ev as unknown as NexusEvent);
    return ev.data;
  }

  /** The broker's per-shard counters (needs the admin permission with accounts). */
  async stats(): Promise<StatsReply> {
    await this.#whenOpen();
    const f = await this.#call({ case: "stats", value: create(StatsRequestSchema, {}) }, "statsReply");
    if (f.body.case !== "statsReply") throw new NexusError("unexpected_reply", "no stats_reply");
    return f.body.value;
  }

  /** A round trip through the broker; resolves with its time in milliseconds. */
  async ping(): Promise<number> {
    await this.#whenOpen();
    const t0 = performance.now();
    await this.#call({ case: "ping", value: create(PingSchema, { nonce: BigInt(Date.now()) }) }, "pong");
    return performance.now() - t0;
  }

  /** Closes the connection: subscriptions end, open requests fail, no reconnect. */
  async close(): Promise<void> {
    if (this.#userClosed) return;
    this.#userClosed = true;
    const ws = this.#ws;
    if (!ws) {
      for (const s of this.#subs) s.end();
      this.#subs.clear();
      this.#setState("closed");
      return;
    }
    await new Promise<void>((resolve) => {
      const done = () => resolve();
      this.addEventListener("state", (ev) => (ev as CustomEvent).detail === "closed" && done());
      ws.close(1000, "client closed");
      setTimeout(() => {
        if (this.#ws === ws) this.#onClose(ws, 1006, "close handshake timed out");
        done();
      }, 2000);
    });
  }
}
