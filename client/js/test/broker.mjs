// SPDX-License-Identifier: Apache-2.0
//
// The real nexusd for the client's tests ($NEXUSD, set by ctest): started on free loopback
// ports (the client port and --ws-listen), waited for, stopped with SIGTERM, and it must exit
// 0 — as tests/harness.h does for the C tests.
import { spawn } from "node:child_process";
import { createServer, connect as tcpConnect } from "node:net";

export const WAIT_MS = 10000; // generous: the suite also runs against an ASan nexusd

export function nexusdPath() {
  const p = process.env.NEXUSD;
  if (!p) throw new Error("NEXUSD is not set (run the tests through ctest)");
  return p;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function accepts(port) {
  return new Promise((resolve) => {
    const c = tcpConnect({ port, host: "127.0.0.1" }, () => {
      c.destroy();
      resolve(true);
    });
    c.on("error", () => resolve(false));
  });
}

export class Broker {
  constructor(flags = [], { shards = 2 } = {}) {
    this.flags = flags;
    this.shards = shards;
    this.port = 0;
    this.wsPort = 0;
    this.proc = null;
    this.exited = null;
  }

  get url() {
    return `ws://127.0.0.1:${this.wsPort}/`;
  }

  get address() {
    return `127.0.0.1:${this.port}`;
  }

  /** Starts nexusd (again at the same ports once started: a restart for reconnect tests). */
  async start() {
    for (let attempt = 0; attempt < 5; attempt++) {
      if (!this.port) {
        this.port = await freePort();
        this.wsPort = await freePort();
      }
      const argv = ["--listen", this.address, "--ws-listen", `127.0.0.1:${this.wsPort}`,
        "--shards", String(this.shards), "--log-level", process.env.NEXUS_TEST_LOG || "warn",
        ...this.flags];
      const proc = spawn(nexusdPath(), argv, { stdio: ["ignore", "inherit", "inherit"] });
      this.proc = proc;
      this.exited = new Promise((resolve) => proc.on("exit", (code, sig) => resolve(sig ? 128 : code)));
      const deadline = Date.now() + WAIT_MS;
      let gone = false;
      proc.on("exit", () => (gone = true));
      while (Date.now() < deadline && !gone) {
        if ((await accepts(this.wsPort)) && (await accepts(this.port))) return this;
        await new Promise((r) => setTimeout(r, 20));
      }
      proc.kill("SIGKILL");
      await this.exited;
      this.proc = null;
      if (attempt < 4) this.port = 0;
    }
    throw new Error("nexusd did not start");
  }

  /** SIGTERM; resolves with the exit status (0 expected). */
  async stop() {
    if (!this.proc) return 0;
    const proc = this.proc;
    this.proc = null;
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 15000);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

/** Waits until pred() is truthy (polling), at most ms. */
export async function waitUntil(pred, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const v = await pred();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}
