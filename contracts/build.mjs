// Compiles contracts/src/**/*.sol with solc-js (standard JSON) and writes one artifact per contract to
// src/fabstir/chain/artifacts/<Name>.json (contracts under src/test/ to artifacts/test/).
//
//   node contracts/build.mjs [--out DIR]
//
// Why solc-js: it is the only Solidity compiler that installs offline from a registry (npm) and runs
// everywhere Node does; the exact version comes from package-lock.json. Settings are fixed here
// (evmVersion cancun: py-evm and eth-tester know no later fork; optimizer 200 runs), and the output is
// deterministic -- sorted keys, no timestamps, source unit names relative to contracts/ -- so a rebuild
// anywhere gives the same bytes, which tests/chain/test_artifacts.py checks against the committed files.
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const HERE = dirname(fileURLToPath(import.meta.url));
const SRC = join(HERE, "src");
const NODE_MODULES = join(HERE, "node_modules");
const DEFAULT_OUT = resolve(HERE, "..", "src", "fabstir", "chain", "artifacts");
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"] },
  },
};

function parseArgs(argv) {
  let out = DEFAULT_OUT;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out" && i + 1 < argv.length) out = resolve(argv[++i]);
    else throw new Error(`usage: node build.mjs [--out DIR] (got ${argv[i]})`);
  }
  return { out };
}

function solFiles(dir) {
  return readdirSync(dir, { withFileTypes: true })
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .flatMap((e) => {
      if (e.isDirectory()) return solFiles(join(dir, e.name));
      return e.name.endsWith(".sol") ? [join(dir, e.name)] : [];
    });
}

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

// Every source the compiler saw, by unit name: its bytes' sha256 (what the artifacts record).
const hashes = new Map();

function load(unit, path) {
  const bytes = readFileSync(path);
  hashes.set(unit, sha256(bytes));
  return bytes.toString("utf8");
}

// Imports resolve only to OpenZeppelin in node_modules (and our own sources): nothing else may sneak in.
function findImports(unit) {
  if (!unit.startsWith("@openzeppelin/contracts/") || unit.includes("..")) {
    return { error: `import not allowed: ${unit}` };
  }
  try {
    return { contents: load(unit, join(NODE_MODULES, ...unit.split("/"))) };
  } catch (err) {
    return { error: `cannot read ${unit}: ${err.message} (run scripts/setup.sh for contracts/node_modules)` };
  }
}

// JSON with keys sorted at every level (arrays keep their order: the ABI's order is solc's).
function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]));
  }
  return value;
}

function main() {
  const { out } = parseArgs(process.argv.slice(2));
  const sources = {};
  for (const path of solFiles(SRC)) {
    const unit = relative(HERE, path).split(sep).join("/");
    sources[unit] = { content: load(unit, path) };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));

  const problems = output.errors ?? [];
  for (const p of problems) process.stderr.write(p.formattedMessage ?? `${p.severity}: ${p.message}\n`);
  if (problems.some((p) => p.severity === "error")) process.exit(1);
  // Our own sources compile without warnings; a new one is a change to look at, not to ignore.
  if (problems.some((p) => p.severity === "warning" && p.sourceLocation?.file?.startsWith("src/"))) {
    process.stderr.write("build.mjs: warnings in contracts/src (fix them)\n");
    process.exit(1);
  }

  const compiler = solc.version();
  const written = [];
  for (const unit of Object.keys(sources)) {
    for (const [name, contract] of Object.entries(output.contracts[unit] ?? {})) {
      if (!contract.evm.bytecode.object) continue; // interfaces and abstract contracts
      const used = Object.keys(JSON.parse(contract.metadata).sources).sort();
      const artifact = {
        contractName: name,
        abi: contract.abi,
        bytecode: `0x${contract.evm.bytecode.object}`,
        deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
        compiler,
        evmVersion: SETTINGS.evmVersion,
        optimizer: SETTINGS.optimizer,
        sourcePath: `contracts/${unit}`,
        sourceSha256: hashes.get(unit),
        sourcesSha256: Object.fromEntries(used.map((u) => [u, hashes.get(u)])),
      };
      const dir = unit.startsWith("src/test/") ? join(out, "test") : out;
      mkdirSync(dir, { recursive: true });
      const file = join(dir, `${name}.json`);
      writeFileSync(file, `${JSON.stringify(sortKeys(artifact), null, 2)}\n`);
      const size = (artifact.deployedBytecode.length - 2) / 2;
      written.push(`${relative(process.cwd(), file)} (${size} bytes deployed)`);
    }
  }
  process.stderr.write(`build.mjs: solc ${compiler}, wrote\n  ${written.join("\n  ")}\n`);
}

main();
