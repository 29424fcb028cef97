// SPDX-License-Identifier: Apache-2.0
//
// The dashboard's static file server: public/ (the page, its style) and dist/ (the bundled
// app.js, `npm run build`), nothing else, with node:http alone. The page talks to nexusd
// itself, over WebSocket.
//
//   node serve.mjs [--port 8080] [--host 127.0.0.1] [--ws ws://127.0.0.1:7480/] [--campaign 42]
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, normalize, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const roots = [join(here, "public"), join(here, "dist")];
const types = {
  ".html": "text/html; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".map": "application/json",
};

/** The file a URL path names under one of the roots, or undefined. */
function resolve(urlPath) {
  let p;
  try {
    p = decodeURIComponent(urlPath.split("?")[0]);
  } catch {
    return undefined;
  }
  if (p.endsWith("/")) p += "index.html";
  for (const root of roots) {
    const f = normalize(join(root, p));
    if (!f.startsWith(root + sep)) continue; /* no way out of the roots */
    try {
      if (statSync(f).isFile()) return f;
    } catch {
      /* not in this root */
    }
  }
  return undefined;
}

/** Starts the server; resolves with it and its base URL (port 0: any free port). */
export function startServer({ port = 8080, host = "127.0.0.1" } = {}) {
  const server = createServer((req, res) => {
    const f = req.method === "GET" || req.method === "HEAD" ? resolve(req.url ?? "/") : undefined;
    if (!f) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    res.writeHead(200, {
      "content-type": types[extname(f)] ?? "application/octet-stream",
      "cache-control": "no-store",
    });
    if (req.method === "HEAD") res.end();
    else createReadStream(f).pipe(res);
  });
  return new Promise((ok, fail) => {
    server.on("error", fail);
    server.listen(port, host, () => {
      const a = server.address();
      ok({ server, url: `http://${host}:${a.port}/` });
    });
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const arg = (name, def) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : def;
  };
  const { url } = await startServer({ port: Number(arg("port", 8080)), host: arg("host", "127.0.0.1") });
  const q = new URLSearchParams({ ws: arg("ws", "ws://127.0.0.1:7480/"), campaign: arg("campaign", "42") });
  console.log(`dashboard: ${url}?${q}`);
  console.log("(nexusd must listen for WebSocket clients: nexusd --ws-listen 127.0.0.1:7480)");
}
