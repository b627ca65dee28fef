#!/usr/bin/env node
// Entry point installed as `splitnet`: runs the compiled CLI (npm ci builds it in a
// checkout; the package npm pack makes carries it).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
if (!existsSync(cli)) {
  process.stderr.write(`splitnet: ${cli} is missing: in a checkout run 'npm run build' (npm ci does it); ` +
    `to install elsewhere use the package from 'npm pack' (README: Installing on a worker host)\n`);
  process.exit(1);
}
const { main } = await import(cli);
process.exitCode = await main(process.argv.slice(2));
