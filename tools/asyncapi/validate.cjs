// Parse an AsyncAPI document with the AsyncAPI project's own parser, $refs to local files
// resolved, and print its diagnostics as JSON lines; exit 1 when any has severity error.
//   node tools/asyncapi/validate.cjs DOCUMENT [NPM_PREFIX]
// NPM_PREFIX (default ~/.cache/cfn/npm, or CFN_NPM_CACHE) holds node_modules/@asyncapi/parser,
// installed by `tools/install-deps test` from this folder's package-lock.json.
'use strict';
const { createRequire } = require('node:module');
const os = require('node:os');
const path = require('node:path');

async function main() {
  const [document, prefixArg] = process.argv.slice(2);
  if (!document) {
    console.error('usage: validate.cjs DOCUMENT [NPM_PREFIX]');
    return 2;
  }
  const prefix =
    prefixArg || process.env.CFN_NPM_CACHE || path.join(os.homedir(), '.cache', 'cfn', 'npm');
  const load = createRequire(path.join(path.resolve(prefix), 'package.json'));
  const { Parser, fromFile, DiagnosticSeverity } = load('@asyncapi/parser');
  const version = load('@asyncapi/parser/package.json').version;
  const parser = new Parser();
  const { document: parsed, diagnostics } = await fromFile(parser, path.resolve(document)).parse();
  let errors = 0;
  for (const d of diagnostics) {
    const error = d.severity === DiagnosticSeverity.Error;
    errors += error ? 1 : 0;
    const where = (d.path || []).join('.');
    console.log(JSON.stringify({ severity: d.severity, error, code: d.code, path: where, message: d.message }));
  }
  const channels = parsed ? parsed.channels().all().map((c) => c.id()) : [];
  console.log(JSON.stringify({ parser: version, parsed: Boolean(parsed), errors, channels }));
  return errors === 0 && parsed ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err && err.stack ? err.stack : String(err));
    process.exit(2);
  },
);
