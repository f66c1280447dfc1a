// Checks chat-engine's AsyncAPI document (tests/asyncapi.rs): the official parser
// (@asyncapi/parser) must find no error in it, and every frame of a real session must match
// the payload schema of its message (ajv), with no property the schema does not name.
//
// node asyncapi.cjs <asyncapi.json> <frames.json>, where frames.json is
// [{"from": "client" | "server", "frame": {...}}, ...]. Prints what it found; exits 1 on any
// problem.
const fs = require("fs");
const { Parser } = require("@asyncapi/parser");
const Ajv = require("ajv");

const [documentPath, framesPath] = process.argv.slice(2);
const severities = ["error", "warning", "info", "hint"];

// Schemas name every property a frame has: what the server sends beyond them is drift.
function closed(schema) {
  if (Array.isArray(schema)) return schema.map(closed);
  if (schema === null || typeof schema !== "object") return schema;
  const copy = {};
  for (const [key, value] of Object.entries(schema)) copy[key] = closed(value);
  if (copy.properties && copy.additionalProperties === undefined) copy.additionalProperties = false;
  return copy;
}

async function main() {
  const { document, diagnostics } = await new Parser().parse(fs.readFileSync(documentPath, "utf8"));
  for (const d of diagnostics) {
    console.log(`${severities[d.severity]}: ${d.code}: ${d.message} (at ${d.path.join(".")})`);
  }
  if (!document || diagnostics.some((d) => d.severity === 0)) {
    console.log("the parser refused the document");
    return 1;
  }
  const ajv = new Ajv({ strict: false, allErrors: true });
  // OpenAPI's integer formats, which utoipa writes: whole numbers in JSON.
  for (const format of ["int32", "int64"]) ajv.addFormat(format, { type: "number", validate: Number.isInteger });
  const messages = document.channels().get("ws").messages();
  const validators = new Map();
  let problems = 0;
  for (const { from, frame } of JSON.parse(fs.readFileSync(framesPath, "utf8"))) {
    const key = `${from}.${frame.type}`;
    const message = messages.get(key);
    if (!message) {
      console.log(`no message ${key} for ${JSON.stringify(frame)}`);
      problems++;
      continue;
    }
    if (!validators.has(key)) validators.set(key, ajv.compile(closed(message.payload().json())));
    const validate = validators.get(key);
    if (!validate(frame)) {
      console.log(`${key} does not match its schema: ${JSON.stringify(frame)}\n  ${ajv.errorsText(validate.errors)}`);
      problems++;
    }
  }
  console.log(`checked the document and every frame; ${problems} problem(s)`);
  return problems ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.log(error && error.stack ? error.stack : String(error));
    process.exit(1);
  },
);
