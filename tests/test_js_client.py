"""The JavaScript client's package and the copy of it the node serves.

The node serves node/js-client/ (the demo page imports /fanline/index.js).
That copy is committed, so that a node installs without Node.js; these tests
fail when it differs from a fresh build of clients/js, or when the npm package
would be incomplete.  The client's own tests are clients/js/test/ (`npm test`,
run by `make test`); tests/test_browser_client.py runs it in Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request

import pytest

from .processes import ROOT, NodeProcess

PACKAGE = ROOT / "clients" / "js"
SERVED = ROOT / "node" / "js-client"


def test_the_node_serves_the_current_build_of_the_client() -> None:
    built = {path.name: path.read_bytes() for path in (PACKAGE / "dist").glob("*.js")}
    if not built:
        pytest.fail("clients/js is not built: `cd clients/js && npm ci && npm run build` (make test does)", pytrace=False)
    served = {path.name: path.read_bytes() for path in SERVED.glob("*.js")}
    assert served == built, "node/js-client/ is stale: run `npm run build:node` in clients/js and commit it"


def test_the_npm_package_holds_the_modules_and_their_types() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm not found: install Node.js 20 or newer", pytrace=False)
    result = subprocess.run(
        [npm, "pack", "--dry-run", "--json", "--ignore-scripts"], cwd=PACKAGE, capture_output=True, text=True, check=True
    )
    files = {entry["path"] for entry in json.loads(result.stdout)[0]["files"]}
    modules = {path.stem for path in (PACKAGE / "src").glob("*.ts")}
    assert files == {"package.json", "README.md"} | {f"dist/{m}.js" for m in modules} | {f"dist/{m}.d.ts" for m in modules}
    package = json.loads((PACKAGE / "package.json").read_text())
    assert "dependencies" not in package, "the client has no runtime dependencies"


def test_the_served_client_loads_with_every_module_it_imports(memory_node: NodeProcess) -> None:
    pending, seen = ["index.js"], set()
    while pending:
        name = pending.pop()
        seen.add(name)
        with urllib.request.urlopen(f"{memory_node.url}/fanline/{name}", timeout=5) as response:
            assert response.headers["content-type"].startswith("text/javascript")
            source = response.read().decode()
        pending += [m for m in re.findall(r'from "\./([\w.-]+\.js)"', source) if m not in seen]
    assert seen == {path.name for path in SERVED.glob("*.js")}
