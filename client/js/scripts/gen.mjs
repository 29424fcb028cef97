// SPDX-License-Identifier: Apache-2.0
//
// Generates src/gen/*_pb.ts from proto/nexus.proto and proto/common.proto with protoc
// (Debian: protobuf-compiler) and protoc-gen-es (a dev dependency). The generated files are
// committed, so that building the client needs neither; `--check` regenerates into a
// temporary directory and fails if the committed files differ (run by ctest: js/gen_check).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, mkdirSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, "..");
// proto/ of the repository (ctest runs a copy of the package: NEXUS_SOURCE_DIR names it).
const protoDir = process.env.NEXUS_SOURCE_DIR
  ? join(process.env.NEXUS_SOURCE_DIR, "proto")
  : join(pkg, "..", "..", "proto");
const genDir = join(pkg, "src", "gen");
const plugin = join(pkg, "node_modules", ".bin", "protoc-gen-es");
const check = process.argv.includes("--check");

const out = mkdtempSync(join(tmpdir(), "nexus-js-gen-"));
try {
  execFileSync(
    process.env.PROTOC || "protoc",
    [
      `--plugin=protoc-gen-es=${plugin}`,
      `--es_out=${out}`,
      "--es_opt=target=ts,import_extension=js",
      `-I${protoDir}`,
      "-I/usr/include",
      "nexus.proto",
      "common.proto",
    ],
    { stdio: "inherit" },
  );
  const files = readdirSync(out).sort();
  if (check) {
    const stale = files.filter((f) => {
      try {
        return readFileSync(join(out, f), "utf8") !== readFileSync(join(genDir, f), "utf8");
      } catch {
        return true;
      }
    });
    if (stale.length) {
      console.error(`src/gen is stale (${stale.join(", ")}): run \`npm run gen\` in client/js`);
      process.exit(1);
    }
    console.log(`src/gen is up to date (${files.join(", ")})`);
  } else {
    mkdirSync(genDir, { recursive: true });
    for (const f of files) copyFileSync(join(out, f), join(genDir, f));
    console.log(`generated ${files.join(", ")} in src/gen`);
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}
