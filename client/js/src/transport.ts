// SPDX-License-Identifier: Apache-2.0
//
// The WebSocket under the client: the platform's own (browsers, Node ≥ 22) or, in Node without
// one (Node 20), the `ws` package, loaded only then. Also `ws` when options only it takes are
// given (a CA for wss in tests, headers). Binary messages arrive as ArrayBuffer either way.

/** The part of the WebSocket API the client uses (the browser's and `ws`'s alike). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly protocol: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: unknown,
) => WebSocketLike;

/** The WebSocket constructor to use: `override`, the platform's, or `ws` (Node). */
export async function webSocketClass(
  override: WebSocketConstructor | undefined,
  nodeOptions: unknown,
): Promise<WebSocketConstructor> {
  if (override) return override;
  const g = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (g && nodeOptions === undefined) return g;
  try {
    const mod = (await import("ws")) as { default: unknown };
    return mod.default as WebSocketConstructor;
  } catch {
    if (g) return g;
    throw new Error(
      "no WebSocket implementation: this runtime has none built in and the `ws` package " +
        "is not installed (npm install ws)",
    );
  }
}

/** Opens a socket and waits for it to be open (or fail, or time out). */
export function openSocket(
  WS: WebSocketConstructor,
  url: string,
  protocols: string[],
  nodeOptions: unknown,
  timeoutMs: number,
): Promise<WebSocketLike> {
  return new Promise((resolve, reject) => {
    let ws: WebSocketLike;
    try {
      ws = nodeOptions === undefined ? new WS(url, protocols) : new WS(url, protocols, nodeOptions);
    } catch (e) {
      reject(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    ws.binaryType = "arraybuffer";
    const timer = setTimeout(() => {
      ws.onopen = ws.onclose = ws.onerror = null;
      ws.close();
      reject(new Error(`WebSocket ${url}: not open within ${timeoutMs} ms`));
    }, timeoutMs);
    ws.onopen = () => {
      clearTimeout(timer);
      ws.onopen = ws.onclose = ws.onerror = null;
      resolve(ws);
    };
    ws.onerror = () => {
      /* the close that follows says more */
    };
    ws.onclose = (ev) => {
      clearTimeout(timer);
      ws.onopen = ws.onclose = ws.onerror = null;
      reject(new Error(`WebSocket ${url}: closed before opening (code ${ev.code}) ${ev.reason}`));
    };
  });
}
