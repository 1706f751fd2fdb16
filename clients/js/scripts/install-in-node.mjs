// `npm run build:node`: copy the built modules to node/js-client/, where the node serves them
// (the demo page imports /fanline/index.js). They are committed there so that
// a node installs and runs from PyPI-style packaging without Node.js; the
// Python test tests/test_js_client.py fails when the copy is stale.
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";

const dist = new URL("../dist/", import.meta.url);
const target = new URL("../../../node/js-client/", import.meta.url);
rmSync(target, { recursive: true, force: true });
mkdirSync(target, { recursive: true });
for (const name of readdirSync(dist)) {
  if (name.endsWith(".js")) copyFileSync(new URL(name, dist), new URL(name, target));
}
