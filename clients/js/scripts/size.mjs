// The size a page pays for the client: bundled, minified and gzipped (level 9).
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const result = await build({
  entryPoints: [new URL("../src/index.ts", import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  write: false,
});
const code = result.outputFiles[0].contents;
const gzipped = gzipSync(code, { level: 9 }).length;
console.log(`minified: ${code.length} bytes, minified+gzipped: ${gzipped} bytes`);
