# Writes test/fixtures/tokenizer/clean_references.json: prompts and what Wan2.1's own text
# cleaning makes of them (wan/modules/tokenizers.py, which the wrapper runs too):
# whitespace_clean(basic_clean(text)) = ftfy.fix_text, html.unescape twice, strip, then runs of
# whitespace (the `regex` module's \s) to one space. Needs ftfy and regex (pip install ftfy regex).
#
#   python3 scripts/make-clean-references.py
import html
import json
import os

import ftfy
import regex

PROMPTS = [
    'A cat  sitting\non a mat',
    'Tom &amp; Jerry',
    'Tom &amp;amp; Jerry',
    'caf&eacute; &mdash; &hellip; &copy; 2024 &rsquo;',
    "it&#39;s &#x27;fine&#x27; &#39 no semicolon",
    'A &lt;b&gt;bold&lt;/b&gt; move',
    'don\u2019t walk \u201cslowly\u201d \u2018here\u2019 \u201bodd\u201f \u02bcmodifier',
    'NBSP\u00a0between\u3000ideographic',
    'zero\u200bwidth and\ufeffBOM',
    'tab\tand\r\nCRLF  \u2028 LS \u2029 PS\x0bVT\x0cFF',
    'emoji \U0001F431\u200d\U0001F464 \U0001F1EF\U0001F1F5 \U0001F44D\U0001F3FD',
    '\u4e2d\u6587\u63d0\u793a\u8bcd\uff0c\u4e00\u53ea\u732b\u5728\u8dd1\u3002',
    '\ufb01ne ligature and \uff26\uff35\uff2c\uff2c\uff37\uff29\uff24\uff34\uff28',
    'control\x07bell\x1bescape[31m and \x1b[1;32mgreen\x1b[0m',
    'x\x85nel',
    '&#128512; and &#0; and &#x80; and &#x9d; and &#1; and &#xD800;',
    'A <b>tag</b> &amp; entity',
    'a\u00adsoft hyphen',
    '\uff28\uff45\uff4c\uff4c\uff4f\u3000\uff57\uff4f\uff52\uff4c\uff44',
    '&notit; &not &AMP; &Eacute; &eacute &nbsp;x &unknown; &#65&#66 & alone',
    'c1 \x80euro \x93quoted\x94 \x81',
    'invisible\u2060joiner\u206aold\ufff9anchor\ufffcobject',
    '  \x1cfile\x1dsep\x1f  ',
    'e\u0301 composed and A\u030a',
    '\x00nul',
    'caf\u00c3\u00a9 mojibake',
]


def whitespace_clean(text):
    return regex.sub(r'\s+', ' ', text).strip()


def basic_clean(text):
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


if __name__ == '__main__':
    out = os.path.join(os.path.dirname(__file__), '..', 'test', 'fixtures', 'tokenizer', 'clean_references.json')
    cases = [{'text': p, 'clean': whitespace_clean(basic_clean(p))} for p in PROMPTS]
    with open(out, 'w') as f:
        json.dump({'ftfy': ftfy.__version__, 'cases': cases}, f, ensure_ascii=True, indent=1)
    print(f'wrote {out}: {len(cases)} cases (ftfy {ftfy.__version__})')
