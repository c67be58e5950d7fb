// Parse an AsyncAPI document with the AsyncAPI project's own parser, $refs to local files
// resolved, and print its diagnostics as JSON lines; exit 1 when any has severity error.
//   node tools/asyncapi/validate.cjs DOCUMENT [NPM_PREFIX]
// NPM_PREFIX (default ~/.cache/cfn/npm, or CFN_NPM_CACHE) holds node_modules/@asyncapi/parser,
// installed by `tools/install-deps test` from this folder's package-lock.json.
// cfn's value schemas are JSON Schema 2020-12, declared as
// `application/schema+json;version=2020-12`. The parser checks only the formats its AsyncAPI
// spec knows (draft-07) and passes any other through unchecked, so this registers a schema
// parser for 2020-12 that checks each value schema against the 2020-12 meta-schema (Ajv2020,
// from the ajv the parser itself depends on) and reports what fails as an error.
'use strict';
const { createRequire } = require('node:module');
const os = require('node:os');
const path = require('node:path');

// A schema parser in the shape @asyncapi/parser takes (validate, parse, getMimeTypes). For an
// AsyncAPI 3 document the parser calls only parse(), so parse() records what is wrong in
// `problems` (with the schema's path in the document) and hands the schema on unchanged.
function jsonSchema202012(Ajv2020, problems) {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  const check = (input) => {
    let valid;
    try {
      valid = ajv.validateSchema(input.data);
    } catch (err) {
      return [{ message: String(err && err.message ? err.message : err), path: input.path }];
    }
    if (valid) {
      return [];
    }
    return ajv.errors.map((e) => ({
      message: e.message,
      path: [...input.path, ...e.instancePath.replace(/^\//, '').split('/')],
    }));
  };
  return {
    getMimeTypes: () =>
      ['application/schema', 'application/schema+json', 'application/schema+yaml'].map(
        (type) => `${type};version=2020-12`,
      ),
    async validate(input) {
      return check(input);
    },
    async parse(input) {
      problems.push(...check(input));
      return input.data;
    },
  };
}

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
  const fromParser = createRequire(load.resolve('@asyncapi/parser'));
  const Ajv2020 = fromParser('ajv/dist/2020').default;
  const problems = [];
  const parser = new Parser({ schemaParsers: [jsonSchema202012(Ajv2020, problems)] });
  const { document: parsed, diagnostics } = await fromFile(parser, path.resolve(document)).parse();
  for (const p of problems) {
    diagnostics.push({ ...p, severity: DiagnosticSeverity.Error, code: 'json-schema-2020-12' });
  }
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
