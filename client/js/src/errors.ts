// SPDX-License-Identifier: Apache-2.0
//
// Errors of the Nexus client. Every one is a NexusError with the broker's error code
// (docs/PROTOCOL.md, "error"), or a code of the client's own (connection_lost, closed, timeout).
import type { NexusEvent } from "./events.js";

export class NexusError extends Error {
  /** The broker's error code (`bad_protobuf`, `permission_denied`, ...) or the client's. */
  readonly code: string;
  constructor(code: string, message: string) {
    super(`${code}: ${message}`);
    this.name = "NexusError";
    this.code = code;
  }
}

/** The broker refused the credentials (`unauthorized`) or an operation (`permission_denied`). */
export class AuthError extends NexusError {
  constructor(code: string, message: string) {
    super(code, message);
    this.name = "AuthError";
  }
}

/** The connection went away while an operation waited (a reconnect may follow). */
export class ConnectionLost extends NexusError {
  constructor(message = "the connection to the broker was lost") {
    super("connection_lost", message);
    this.name = "ConnectionLost";
  }
}

/** The client was closed (close(), or reconnecting was given up). */
export class ClientClosed extends NexusError {
  constructor(message = "the client is closed") {
    super("closed", message);
    this.name = "ClientClosed";
  }
}

/** No reply within the client's timeout. */
export class TimeoutError extends NexusError {
  constructor(what: string, ms: number) {
    super("timeout", `${what}: no answer within ${ms} ms`);
    this.name = "TimeoutError";
  }
}

/** A request ended otherwise than `success` (call()): its terminal event says how. */
export class RequestFailed extends NexusError {
  readonly event: NexusEvent;
  constructor(event: NexusEvent) {
    const code = event.state === "failed" ? event.code || "failed" : event.state;
    const msg =
      typeof event.data?.message === "string" ? event.data.message : `request ${event.state}`;
    super(code, msg);
    this.name = "RequestFailed";
    this.event = event;
  }
}
