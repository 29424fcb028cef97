// SPDX-License-Identifier: Apache-2.0
//
// The JS client (dist/, built from src/) against the real nexusd over WebSocket, under Node's
// own test runner (`node --test`, run by ctest as js/client). Covers: hello and the welcome;
// emit and its ack (duplicates recognised); subscriptions with patterns, a campaign, the
// firehose and a user filter, routed client-side from one delivery; JSON payloads round trip;
// requests as async iterators of their lifecycle (a stream of campaign state pushed by an
// update from another client, cancelled by an AbortSignal); call() and RequestFailed; the
// broker's pings answered; stats and ping; the frame limit checked before sending; --token
// (AuthError); reconnecting after the broker restarts (state events, a `reconnect` gap, live
// events again); wss with a private CA.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  AuthError,
  NexusError,
  RequestFailed,
  connect,
  patternMatches,
} from "../dist/index.js";
import { Broker, WAIT_MS, waitUntil } from "./broker.mjs";

describe("against one broker", () => {
  let broker;
  const clients = [];
  const open = async (o = {}) => {
    const c = await connect({ url: broker.url, ...o });
    clients.push(c);
    return c;
  };

  before(async () => {
    broker = await new Broker(["--ping-interval-ms", "300", "--ping-misses", "1"]).start();
  });
  after(async () => {
    for (const c of clients) await c.close();
    assert.equal(await broker.stop(), 0, "nexusd did not exit 0 on SIGTERM");
  });

  test("hello, emit, ack, subscribe, event", async () => {
    const c = await open({ clientName: "js-test-1" });
    assert.equal(c.state, "open");
    assert.equal(c.welcome.protocolVersion, 1);
    assert.match(c.welcome.serverVersion, /^nexusd /);
    assert.equal(c.welcome.shardCount, 2);
    const sub = await c.subscribe("order:*:v1:*", { campaign: 11 });
    const data = { total: 12.5, items: ["a", "b"], nested: { ok: true, none: null }, n: -3 };
    const ack = await c.emit("order:placed:v1:completed", data, {
      campaign: 11,
      eventId: "o-1",
      entityId: "order-1",
      userId: "u-1",
    });
    assert.equal(ack.eventId, "o-1");
    assert.equal(ack.sequence, 1n);
    assert.equal(ack.duplicate, false);
    const ev = await sub.next(WAIT_MS);
    assert.equal(ev.kind, "event");
    assert.equal(ev.eventType, "order:placed:v1:completed");
    assert.equal(ev.service, "order");
    assert.equal(ev.state, "completed");
    assert.equal(ev.campaignId, 11n);
    assert.equal(ev.sequence, 1n);
    assert.equal(ev.entityId, "order-1");
    assert.equal(ev.userId, "u-1");
    assert.deepEqual(ev.data, data);
    assert.ok(ev.timestampUnixNanos > 0n);
    // The same event id again from the same client name: a duplicate, not delivered.
    const dup = await c.emit("order:placed:v1:completed", data, { campaign: 11, eventId: "o-1" });
    assert.equal(dup.duplicate, true);
    await c.emit("order:shipped:v1:completed", {}, { campaign: 11, eventId: "o-2" });
    const next = await sub.next(WAIT_MS);
    assert.equal(next.eventId, "o-2");
    assert.equal(next.sequence, 2n);
    await sub.unsubscribe();
    assert.equal(sub.closed, true);
  });

  test("one delivery reaches every matching subscription", async () => {
    const c = await open();
    const pub = await open();
    const orders = await c.subscribe(["order:*:v1:*"], { campaign: 21 });
    const all = await c.subscribe("*", { campaign: 21 });
    const fire = await c.subscribe([], { campaign: 0 }); // every campaign
    const alice = await c.subscribe("*", { campaign: 21, userId: "alice" });
    await pub.emit("order:placed:v1:completed", { i: 1 }, { campaign: 21, userId: "bob" });
    await pub.emit("chat:message:v1:completed", { i: 2 }, { campaign: 21, userId: "alice" });
    await pub.emit("chat:message:v1:completed", { i: 3 }, { campaign: 22 });
    assert.deepEqual((await orders.next(WAIT_MS)).data, { i: 1 });
    assert.deepEqual((await all.next(WAIT_MS)).data, { i: 1 });
    assert.deepEqual((await all.next(WAIT_MS)).data, { i: 2 });
    assert.deepEqual((await alice.next(WAIT_MS)).data, { i: 2 });
    const seen = [];
    for (let i = 0; i < 3; i++) seen.push((await fire.next(WAIT_MS)).data.i);
    assert.deepEqual(seen.sort(), [1, 2, 3]);
    await assert.rejects(orders.next(200), /timeout/); // the chat events are not its
    assert.equal(patternMatches("order:*:v1:*", "order:placed:v1:completed"), true);
    assert.equal(patternMatches("order:*:v2:*", "order:placed:v1:completed"), false);
  });

  test("a request's lifecycle as an async iterator, cancelled by an AbortSignal", async () => {
    const c = await open();
    const other = await open();
    const state = await c.call("campaign:update:v1", { updates: { round: 1 } }, { campaign: 31 });
    assert.equal(state.state.round, 1);
    const ac = new AbortController();
    const stream = c.request("campaign:stream_state:v1", { min_interval_ms: 10 }, {
      campaign: 31,
      signal: ac.signal,
    });
    const states = [];
    let updated = false;
    for await (const ev of stream) {
      states.push(ev.state);
      assert.equal(ev.correlationId, stream.eventId);
      if (ev.state === "stream" && !updated) {
        assert.equal(ev.data.state.round, 1);
        updated = true;
        await other.call("campaign:update:v1", { updates: { round: 2 } }, { campaign: 31 });
      } else if (ev.state === "stream") {
        assert.equal(ev.data.state.round, 2);
        ac.abort();
      }
    }
    assert.deepEqual(
      states.filter((s) => s !== "heartbeat"),
      ["started", "stream", "stream", "cancelled"],
    );
    const done = await stream.done;
    assert.equal(done.state, "cancelled");
  });

  test("call() rejects with RequestFailed; errors carry the broker's code", async () => {
    const c = await open();
    await assert.rejects(
      c.call("campaign:update:v1", { updates: "oops" }, { campaign: 32 }),
      (e) => e instanceof RequestFailed && e.code === "invalid_updates" && e.event.state === "failed",
    );
    await assert.rejects(
      c.emit("Not A Type", {}),
      (e) => e instanceof NexusError && e.code === "invalid_event_type",
    );
    // Too large for the broker: refused by the client before sending (the connection stays).
    await assert.rejects(
      c.emit("big:blob:v1:completed", { s: "x".repeat(2 << 20) }),
      (e) => e.code === "frame_too_large",
    );
    assert.ok((await c.ping()) >= 0);
    const st = await c.stats();
    assert.equal(st.shards.length, 2);
    assert.ok(st.shards.some((s) => s.connections > 0n));
  });

  test("the broker's pings are answered: the connection outlives --ping-interval-ms", async () => {
    const c = await open();
    const sub = await c.subscribe("*", { campaign: 41 }); // subscribers only read
    await new Promise((r) => setTimeout(r, 1500)); // 5 ping intervals, 1 miss allowed
    assert.equal(c.state, "open");
    const p = await open();
    await p.emit("tick:t:v1:completed", {}, { campaign: 41 });
    assert.equal((await sub.next(WAIT_MS)).eventType, "tick:t:v1:completed");
  });
});

test("--token: a wrong token is an AuthError, the right one connects", async () => {
  const broker = await new Broker(["--token", "js-secret-token"], { shards: 1 }).start();
  try {
    await assert.rejects(
      connect({ url: broker.url, token: "wrong", reconnect: false }),
      (e) => e instanceof AuthError && e.code === "unauthorized",
    );
    const c = await connect({ url: broker.url, token: "js-secret-token" });
    assert.equal(c.state, "open");
    await c.close();
    assert.equal(c.state, "closed");
  } finally {
    assert.equal(await broker.stop(), 0);
  }
});

test("reconnects after the broker restarts", async () => {
  const broker = await new Broker([], { shards: 1 }).start();
  try {
    const c = await connect({ url: broker.url, reconnect: { initialDelayMs: 50, maxDelayMs: 200 } });
    const states = [];
    c.addEventListener("state", (e) => states.push(e.detail));
    const sub = await c.subscribe("*", { campaign: 5 });
    await c.emit("a:b:v1:completed", { n: 1 }, { campaign: 5 });
    assert.equal((await sub.next(WAIT_MS)).sequence, 1n);
    assert.equal(await broker.stop(), 0);
    await waitUntil(() => c.state === "reconnecting", "reconnecting");
    await broker.start();
    await waitUntil(() => c.state === "open", "reconnected");
    const gap = await sub.next(WAIT_MS);
    assert.equal(gap.kind, "gap");
    assert.equal(gap.reason, "reconnect");
    assert.equal(gap.firstSequence, 2n);
    await c.emit("a:b:v1:completed", { n: 2 }, { campaign: 5 });
    const ev = await sub.next(WAIT_MS);
    assert.deepEqual(ev.data, { n: 2 });
    assert.equal(ev.sequence, 1n); // a new broker: the campaign starts over
    assert.deepEqual(states, ["reconnecting", "open"]);
    await c.close();
  } finally {
    assert.equal(await broker.stop(), 0);
  }
});

test("wss: TLS with a private CA (nodeOptions.ca)", async () => {
  const d = mkdtempSync(join(tmpdir(), "nexus-js-tls-"));
  try {
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt",
      "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", join(d, "k.pem"), "-out",
      join(d, "c.pem"), "-days", "2", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { stdio: "ignore" });
    const broker = await new Broker(["--tls-cert", join(d, "c.pem"), "--tls-key", join(d, "k.pem")],
      { shards: 1 }).start();
    try {
      const url = `wss://localhost:${broker.wsPort}/`;
      const c = await connect({ url, nodeOptions: { ca: readFileSync(join(d, "c.pem")) } });
      const sub = await c.subscribe("*", { campaign: 3 });
      await c.emit("secure:msg:v1:completed", { over: "tls" }, { campaign: 3 });
      assert.deepEqual((await sub.next(WAIT_MS)).data, { over: "tls" });
      await c.close();
      await assert.rejects(connect({ url, reconnect: false, nodeOptions: {} }));
    } finally {
      assert.equal(await broker.stop(), 0);
    }
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});
