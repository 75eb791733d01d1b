// Wan's text cleaning (tokenizers.py whitespace_clean(basic_clean(text)): ftfy.fix_text, html.unescape
// twice, whitespace) against what the official code makes of prompts that exercise each step
// (test/fixtures/tokenizer/clean_references.json, from scripts/make-clean-references.py with ftfy).
// Pure TypeScript: no addon is loaded.
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

import { cleanText } from '../../lib/tokenizer';
import { fixturesDir } from '../helpers';

const references: { ftfy: string; cases: { text: string; clean: string }[] } =
  JSON.parse(fs.readFileSync(path.join(fixturesDir, 'tokenizer', 'clean_references.json'), 'utf8'));

// ftfy's mojibake repair (UTF-8 read as Windows-1252) guesses from statistics of its own and is
// not ported: such text stays as it came.
const MOJIBAKE = 'caf\u00c3\u00a9 mojibake';

// A test name in printable ASCII (TAP reads U+2028 and the like as line ends).
const ascii = (text: string) => JSON.stringify(text).replace(/[^\x20-\x7e]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);

t.test(`every prompt cleans as the official code cleans it (ftfy ${references.ftfy}), but mojibake`, async (t) => {
  for (const { text, clean } of references.cases) {
    if (text === MOJIBAKE) continue;
    t.equal(cleanText(text), clean, ascii(text));
  }
  t.equal(cleanText(MOJIBAKE), MOJIBAKE, 'mojibake is left alone');
  t.ok(references.cases.length >= 25, `${references.cases.length} prompts`);
});
