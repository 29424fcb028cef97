// SPDX-License-Identifier: Apache-2.0
//
// The dashboard in a real browser: Debian's chromium ($CHROMIUM, default /usr/bin/chromium;
// never a downloaded one), headless, driven by puppeteer-core, with a fresh profile. The test
// starts nexusd (--ws-listen) and the example's static server, opens the page, then changes the
// campaign's state with nexusctl and asserts the page shows the new state within a bound; an
// event emitted with nexusctl reaches the tail, a peer that joins a media room (from the Node
// client) appears in the rooms panel, the analytics panel fills in. The page must log no error.
// A screenshot is saved as an artifact: $NEXUS_ARTIFACT_DIR (ctest: the build dir's
// artifacts/) or ./artifacts.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { test } from "node:test";

import puppeteer from "puppeteer-core";
import { connect } from "@nexus-broker/client";

import { Broker } from "../../../client/js/test/broker.mjs";
import { startServer } from "../serve.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const run = promisify(execFile);
const CAMPAIGN = 42;
const SHOW_WITHIN_MS = 5000; // the bound: a pushed change is on screen well within it

function nexusctl(...args) {
  const bin = process.env.NEXUSCTL;
  if (!bin) throw new Error("NEXUSCTL is not set (run the tests through ctest)");
  return run(bin, args, { timeout: 20000 });
}

test("the dashboard shows live campaign state, events, peers and analytics", async (t) => {
  const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
  assert.ok(existsSync(chromium), `no browser at ${chromium} (Debian: apt-get install chromium)`);
  const artifacts = process.env.NEXUS_ARTIFACT_DIR || join(here, "..", "artifacts");
  mkdirSync(artifacts, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), "nexus-chromium-"));
  t.after(() => rmSync(profile, { recursive: true, force: true }));

  const broker = await new Broker([]).start();
  t.after(async () => assert.equal(await broker.stop(), 0, "nexusd did not exit 0"));
  const { server, url } = await startServer({ port: 0 });
  t.after(() => server.close());

  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      `--user-data-dir=${profile}`,
    ],
  });
  t.after(() => browser.close());
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));

  const q = new URLSearchParams({ ws: broker.url, campaign: String(CAMPAIGN) });
  await page.goto(`${url}?${q}`, { waitUntil: "load" });
  await page.waitForSelector('#status[data-state="open"]', { timeout: 15000 });
  // The state stream's first push: the whole (empty) state, version 0.
  await page.waitForFunction(() => document.getElementById("state-version").textContent === "0", {
    timeout: 15000,
  });

  // Change the state with nexusctl: the page shows it within the bound.
  const t0 = Date.now();
  await nexusctl("request", "campaign:update:v1", "--broker", broker.address, "--campaign",
    String(CAMPAIGN), "--data", '{"updates": {"round": 7, "theme": "dark"}}');
  await page.waitForFunction(
    () => {
      const v = (k) => document.querySelector(`#state-table tr[data-key="${k}"] td.value`)?.textContent;
      return document.getElementById("state-version").textContent === "1" && v("round") === "7" &&
        v("theme") === "dark";
    },
    { timeout: SHOW_WITHIN_MS },
  );
  const shownMs = Date.now() - t0;
  assert.ok(shownMs < SHOW_WITHIN_MS, `state shown after ${shownMs} ms`);

  // An event emitted with nexusctl reaches the tail.
  await nexusctl("emit", "order:placed:v1:completed", "--broker", broker.address, "--campaign",
    String(CAMPAIGN), "--entity", "order-77", "--data", '{"total": 3}');
  await page.waitForSelector('#tail tr[data-type="order:placed:v1:completed"]', { timeout: 10000 });
  const entity = await page.$eval('#tail tr[data-type="order:placed:v1:completed"] td:nth-child(3)',
    (td) => td.textContent);
  assert.equal(entity, "order-77");

  // A peer joins a media room (its connection stays open: it stays in the room).
  const peer = await connect({ url: broker.url });
  t.after(() => peer.close());
  await peer.call("media:join_room:v1", { context_id: "standup", peer_id: "alice" }, {
    campaign: CAMPAIGN,
  });
  await page.waitForSelector('#rooms li[data-room="standup"] .peer[data-peer="alice"]', {
    timeout: 10000,
  });

  // Analytics: a sample names the campaign's subscribers (the page's tail at least).
  await page.waitForFunction(
    () => Number(document.querySelector('#analytics-table tr[data-key="subscribers"] td.num')
      ?.textContent) >= 1,
    { timeout: 10000 },
  );

  const shot = join(artifacts, "web-dashboard.png");
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(existsSync(shot));
  console.log(`state change shown after ${shownMs} ms; screenshot: ${shot}`);
  assert.deepEqual(problems, []);
});
