#!/usr/bin/env node
// Writes docs/options.md and docs/cli.md from the code, so the reference cannot drift from it:
//
//   docs/options.md  one table per public options interface of lib/*.ts (option, type, default,
//                    description), read with the TypeScript compiler API from the declarations
//                    and their doc comments (JSDoc or a trailing `// ...` comment).
//   docs/cli.md      the command line's help, verbatim: `node dist/lib/cli.js <command> --help`.
//
// Usage: node scripts/gen-option-tables.js [--no-build] [--check]
//   --no-build  use dist/ as it is (by default the TypeScript is compiled first: tsc -p tsconfig.json)
//   --check     write nothing; exit 1 when either file differs from what would be written
//
// The output depends only on the sources: declaration order, no dates, help at commander's
// default width (80 columns, stdout not a terminal) and without colours.
//
// Defaults are not in the type system; the comments state them, in a few styles:
//   JSDoc       "(default 512, as Wan)", "default 'disabled': ...", "'sdpa' (default), ...",
//               "(832)." or "(1.0, 0..10)." at the end, "context_frames: ...; 81, 2..1000."
//   trailing    "steps?: number;  // 30", "// 0: first step to run"
// Each is matched only where it starts with a literal (a number, true/false, a '...' string or a
// `...` code span); anything else leaves the default blank rather than guessing. A default found
// in both the JSDoc and the trailing comment that disagrees is left blank, with a warning.
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const ts = require('typescript');

const ROOT = path.join(__dirname, '..');
const OPTIONS_MD = path.join(ROOT, 'docs', 'options.md');
const CLI_MD = path.join(ROOT, 'docs', 'cli.md');
const COMMAND = 'node scripts/gen-option-tables.js';

// The interfaces documented, in this order, with the calls that take them. `optional`: skipped
// (with a note on stderr) when lib/ does not declare it.
const INTERFACES = [
  { name: 'LoadCheckpointOptions', usedBy: ['loadSafetensors(path, options)', 'loadCheckpoint(path, options)'] },
  { name: 'ModelLoaderOptions', usedBy: ['WanModel.load(path, options)'] },
  { name: 'BlockSwapOptions', usedBy: ['ModelLoaderOptions.blockSwap', 'model.setBlockSwap(options)'] },
  { name: 'PlanMemoryOptions', usedBy: ['planMemory(options)'] },
  { name: 'LoraOptions', usedBy: ['ModelLoaderOptions.loras (one entry per LoRA)'] },
  { name: 'TextEncoderOptions', usedBy: ['TextEncoder.load(path, options)'] },
  { name: 'EncodeOptions', usedBy: ['textEncoder.encode({ positive, negative }, options)'] },
  { name: 'ClipVisionOptions', usedBy: ['ClipVisionEncoder.load(path, options)'] },
  { name: 'ClipVisionEncodeOptions', usedBy: ['clipVisionEncoder.encode(image, options)'] },
  { name: 'VaeOptions', usedBy: ['Vae.load(path, options)'] },
  { name: 'VaeDecodeOptions', usedBy: ['vae.decode(latent, options)', 'vae.decodeFrames(latent, options)'] },
  { name: 'VaeMemoryEstimateOptions', usedBy: ['vae.estimateDecodeMemory(options)'] },
  { name: 'VideoSize', usedBy: ['emptyEmbeds(size)', 'imageToVideoEncode(options) (inherited)'] },
  { name: 'ImageToVideoEncodeOptions', usedBy: ['imageToVideoEncode(options)'] },
  { name: 'SamplerOptions', usedBy: ['new Sampler(model).sample(options)'] },
  { name: 'FetaArgs', usedBy: ['SamplerOptions.fetaArgs'] },
  { name: 'ContextOptions', usedBy: ['SamplerOptions.contextOptions'] },
  { name: 'SlgArgs', usedBy: ['SamplerOptions.slgArgs'] },
  { name: 'LoopArgs', usedBy: ['SamplerOptions.loopArgs'] },
  { name: 'ExperimentalArgs', usedBy: ['SamplerOptions.experimentalArgs'] },
  { name: 'FreeInitArgs', usedBy: ['SamplerOptions.freeinitArgs'] },
  { name: 'NagArgs', usedBy: ['SamplerOptions.nagArgs'] },
  { name: 'ScheduleOptions', usedBy: ['schedule(name, options)'] },
  { name: 'LoadVideoOptions', usedBy: ['loadVideo(file, options)'] },
  { name: 'VideoCombineOptions', usedBy: ['videoCombine(frames, options)'] },
  { name: 'RunWorkflowOptions', usedBy: ['runWorkflow(workflow, options)'] },
];

// Members of this interface are not repeated in every table: one line says so, and the
// interface gets its own table at the end.
const LONG_CALL = 'LongCallOptions';

// The CLI help pages in docs/cli.md, in order.
const HELP_PAGES = [
  { title: 'wan-native --help', args: ['--help'] },
  { title: 'wan-native demo --help', args: ['demo', '--help'] },
  { title: 'wan-native generate --help', args: ['generate', '--help'] },
  { title: 'wan-native run --help', args: ['run', '--help'] },
  { title: 'wan-native inspect --help', args: ['inspect', '--help'] },
];

// ---------------------------------------------------------------------------------------------
// Reading the declarations

function createProgram() {
  const configFile = path.join(ROOT, 'tsconfig.json');
  const host = { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => fail(ts.flattenDiagnosticMessageText(d.messageText, '\n')) };
  const parsed = ts.getParsedCommandLineOfConfigFile(configFile, {}, host);
  const libFiles = fs.readdirSync(path.join(ROOT, 'lib')).filter((f) => f.endsWith('.ts')).sort()
    .map((f) => path.join(ROOT, 'lib', f));
  return ts.createProgram(libFiles, { ...parsed.options, noEmit: true });
}

// Exported interfaces of lib/*.ts by name.
function findInterfaces(program) {
  const found = new Map();
  const libDir = path.join(ROOT, 'lib') + path.sep;
  for (const sf of program.getSourceFiles()) {
    if (!path.resolve(sf.fileName).startsWith(libDir)) continue;
    ts.forEachChild(sf, (node) => {
      const exported = ts.getCombinedModifierFlags(node) & ts.ModifierFlags.Export;
      if (!ts.isInterfaceDeclaration(node) || !exported) return;
      if (found.has(node.name.text)) fail(`interface ${node.name.text} is exported twice from lib/`);
      found.set(node.name.text, node);
    });
  }
  return found;
}

const clean = (text) => text.replace(/\s+/g, ' ').trim();

function docOf(symbol, checker) {
  return clean(ts.displayPartsToString(symbol.getDocumentationComment(checker)));
}

// The `// ...` comment after a member on its line, if any.
function trailingComment(decl) {
  const text = decl.getSourceFile().text;
  const ranges = ts.getTrailingCommentRanges(text, decl.end) ?? [];
  const line = ranges.find((r) => r.kind === ts.SyntaxKind.SingleLineCommentTrivia);
  return line ? clean(text.slice(line.pos + 2, line.end)) : '';
}

// The string literals a type alias stands for ('sdpa' | 'flash' | ...), in source order where the
// alias is written as a union of literals; otherwise as the checker resolves it.
function literalValues(typeNode, checker) {
  if (!typeNode) return undefined;
  if (ts.isArrayTypeNode(typeNode)) return literalValues(typeNode.elementType, checker);
  if (!ts.isTypeReferenceNode(typeNode)) return undefined;
  let symbol = checker.getSymbolAtLocation(typeNode.typeName);
  if (symbol && symbol.flags & ts.SymbolFlags.Alias) symbol = checker.getAliasedSymbol(symbol);
  const alias = symbol?.declarations?.find(ts.isTypeAliasDeclaration);
  if (!alias) return undefined;
  if (ts.isUnionTypeNode(alias.type) &&
      alias.type.types.every((t) => ts.isLiteralTypeNode(t) && ts.isStringLiteral(t.literal)))
    return alias.type.types.map((t) => t.literal.text);
  const type = checker.getTypeFromTypeNode(typeNode);
  if (type.isUnion() && type.types.every((t) => t.isStringLiteral())) return type.types.map((t) => t.value);
  return undefined;
}

function describeInterface(decl, checker) {
  const symbol = checker.getSymbolAtLocation(decl.name);
  const type = checker.getDeclaredTypeOfSymbol(symbol);
  const heritage = (decl.heritageClauses ?? []).flatMap((h) => h.types.map((t) => clean(t.getText())));
  const members = [];
  const foldedLongCall = [];
  for (const prop of checker.getPropertiesOfType(type)) {
    const member = prop.declarations?.find((d) => ts.isPropertySignature(d) || ts.isPropertyDeclaration(d));
    if (!member) fail(`${decl.name.text}.${prop.name}: no property declaration to document`);
    const owner = ts.isInterfaceDeclaration(member.parent) ? member.parent.name.text : decl.name.text;
    if (owner === LONG_CALL && decl.name.text !== LONG_CALL) {
      foldedLongCall.push(prop.name);
      continue;
    }
    const jsdoc = docOf(prop, checker);
    const trailing = trailingComment(member);
    members.push({
      name: prop.name,
      owner: owner === decl.name.text ? undefined : owner,
      optional: Boolean(prop.flags & ts.SymbolFlags.Optional),
      typeText: member.type ? clean(member.type.getText()) : 'unknown',
      values: literalValues(member.type, checker),
      references: referencedInterfaces(member.type),
      jsdoc,
      trailing,
      default: defaultOf(`${decl.name.text}.${prop.name}`, jsdoc, trailing),
    });
  }
  return {
    name: decl.name.text,
    file: path.relative(ROOT, decl.getSourceFile().fileName).split(path.sep).join('/'),
    doc: docOf(symbol, checker),
    heritage,
    members,
    foldedLongCall,
  };
}

// Names of the documented interfaces a member's type mentions (for a "see" link).
function referencedInterfaces(typeNode) {
  const names = [];
  const visit = (node) => {
    if (ts.isTypeReferenceNode(node) && ts.isIdentifier(node.typeName)) names.push(node.typeName.text);
    ts.forEachChild(node, visit);
  };
  if (typeNode) visit(typeNode);
  return names.filter((n) => INTERFACES.some((i) => i.name === n));
}

// ---------------------------------------------------------------------------------------------
// Defaults from the comments

const LIT = String.raw`(?:'[^']*'|\x60[^\x60]+\x60|-?\d+(?:\.\d+)?(?:e-?\d+)?|true|false)`;
const RANGE = String.raw`-?\d+(?:\.\d+)?\.\.-?\d+(?:\.\d+)?(?:\^\d+)?(?:-\d+)?`;
const JSDOC_RULES = [
  // "default 'disabled'", "Default `<cwd>/output`", "default `a` or `b`"
  new RegExp(String.raw`\bdefault:?\s+(${LIT}(?:\s+or\s+${LIT})*)(?!\w|\.\d)`, 'i'),
  // "'sdpa' (default)", "true (default): ...", "('average' default, ..."
  new RegExp(String.raw`(?:^|[\s(])(${LIT})\s+\(?default\b`, 'i'),
  // "... (832)." or "... (1.0, 0..10)." ending the comment or a clause: "(false); no effect ..."
  new RegExp(String.raw`\((${LIT})(?:,\s*${RANGE})?\)(?:[.;]|$)`),
  // "context_frames: pixel frames per window; 81, 2..1000."
  new RegExp(String.raw`;\s*(${LIT})(?:,\s*${RANGE})?\.(?:\s|$)`),
];
// "// 30", "// 6.0, or one per step", "// 0: first step to run", "// 272 pixels"
const TRAILING_RULE = new RegExp(String.raw`^(${LIT})(?=$|[,:;\s])`);

function firstMatch(text, rules) {
  for (const rule of rules) {
    const m = rule.exec(text);
    if (m) return m[1];
  }
  return undefined;
}

function defaultOf(what, jsdoc, trailing) {
  const fromDoc = jsdoc ? firstMatch(jsdoc, JSDOC_RULES) : undefined;
  const fromComment = trailing ? firstMatch(trailing, [TRAILING_RULE]) : undefined;
  if (fromDoc !== undefined && fromComment !== undefined && fromDoc !== fromComment) {
    process.stderr.write(`warning: ${what}: the JSDoc says default ${fromDoc}, the trailing comment ${fromComment}; left blank\n`);
    return undefined;
  }
  return fromDoc ?? fromComment;
}

// ---------------------------------------------------------------------------------------------
// Markdown

// Table cells: pipes escaped everywhere (GitHub needs it inside code spans too); '<' and '>'
// escaped outside code spans so that `<prefix>` in prose is not taken for HTML.
function prose(text) {
  return text.split(/(`[^`]*`)/).map((part, i) => (i % 2 === 1 ? part : part.replace(/</g, '&lt;').replace(/>/g, '&gt;'))).join('');
}

function cell(text) {
  return prose(text).replace(/\|/g, '\\|');
}

const code = (text) => (text.includes('`') ? `\`\` ${text} \`\`` : `\`${text}\``);

function literalCell(lit) {
  return lit.split(/\s+or\s+/).map((one) => code(one.startsWith('`') ? one.slice(1, -1) : one)).join(' or ');
}

function anchor(name) {
  return `#${name.toLowerCase()}`;
}

function table(info) {
  const rows = ['| option | type | default | description |', '|:--|:--|:--|:--|'];
  for (const m of info.members) {
    let type = cell(code(m.typeText));
    if (m.values) type += `<br>${cell(m.values.map((v) => code(`'${v}'`)).join(', '))}`;
    const def = m.optional ? (m.default === undefined ? '' : literalCell(m.default)) : '*required*';
    let description = [m.jsdoc, m.trailing].filter(Boolean).join(' ');
    const see = [...new Set(m.references)].filter((r) => r !== info.name).map((r) => `[${r}](${anchor(r)})`);
    if (see.length) description += `${description ? ' ' : ''}See ${see.join(', ')}.`;
    if (m.owner) description = `*(from ${m.owner})* ${description}`;
    rows.push(`| \`${m.name}\` | ${type} | ${cell(def)} | ${cell(description)} |`);
  }
  return rows.join('\n');
}

function optionsMarkdown(infos, longCall) {
  const out = [];
  out.push('# Options of the library');
  out.push('');
  out.push(`<!-- Generated by \`${COMMAND}\` from lib/*.ts. Do not edit by hand: change the doc comments and regenerate. -->`);
  out.push('');
  out.push(`Generated by \`${COMMAND}\` from the declarations and doc comments in \`lib/*.ts\`;`);
  out.push('regenerate it after changing an option (the same command writes [cli.md](cli.md)). Types are');
  out.push('as declared; where a type is a union of string literals, its values follow it. Defaults are');
  out.push('taken from the comments where they state one plainly, and left blank otherwise: the');
  out.push('description then says what happens when the option is left out. Names are the camelCased');
  out.push("ComfyUI WanVideoWrapper / VideoHelperSuite inputs, with the wrappers' defaults unless a");
  out.push('description says otherwise.');
  out.push('');
  out.push(`Every long call also takes \`signal\` and \`onProgress\` ([${LONG_CALL}](${anchor(LONG_CALL)})); the tables`);
  out.push('below say where an interface includes them rather than repeating them.');
  out.push('');
  for (const info of infos) out.push(`- [${info.name}](${anchor(info.name)}): ${info.usedBy.map((u) => `\`${u}\``).join(', ')}`);
  out.push(`- [${LONG_CALL}](${anchor(LONG_CALL)}): every long call`);
  for (const info of [...infos, longCall]) {
    out.push('');
    out.push(`## ${info.name}`);
    out.push('');
    const where = info.usedBy.map((u) => `\`${u}\``).join(', ');
    out.push(`${where} · declared in [${info.file}](../${info.file})`);
    if (info.doc) {
      out.push('');
      out.push(prose(info.doc));
    }
    const bases = info.heritage.filter((h) => h !== LONG_CALL);
    const notes = [];
    if (bases.length) notes.push(`Includes the options of ${bases.map((b) => code(b)).join(', ')} (marked *from*).`);
    if (info.foldedLongCall.length)
      notes.push(`Also takes ${info.foldedLongCall.map((n) => `\`${n}\``).join(' and ')} ([${LONG_CALL}](${anchor(LONG_CALL)})).`);
    if (notes.length) {
      out.push('');
      out.push(notes.join(' '));
    }
    out.push('');
    out.push(table(info));
  }
  out.push('');
  return out.join('\n');
}

function cliMarkdown(pages) {
  const out = [];
  out.push('# Command line');
  out.push('');
  out.push(`<!-- Generated by \`${COMMAND}\` from \`node dist/lib/cli.js <command> --help\`. Do not edit by hand. -->`);
  out.push('');
  out.push(`The help of \`npx wan-native\`, verbatim, as \`${COMMAND}\` captured it from`);
  out.push('`node dist/lib/cli.js <command> --help` (after `npx tsc -p tsconfig.json`). The options of');
  out.push('`generate` are the library options of [options.md](options.md) under the ComfyUI nodes\' names');
  out.push('in kebab case; where a default differs from the library\'s, the help below gives the one the');
  out.push('command uses.');
  for (const page of pages) {
    out.push('');
    out.push(`## ${page.title}`);
    out.push('');
    out.push('```text');
    out.push(page.text.replace(/\s+$/, ''));
    out.push('```');
  }
  out.push('');
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------
// The CLI's help

function build() {
  const tsc = require.resolve('typescript/bin/tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  } catch (err) {
    fail(`tsc -p tsconfig.json failed:\n${err.stdout ?? ''}${err.stderr ?? ''}`);
  }
}

function helpPages() {
  const cli = path.join(ROOT, 'dist', 'lib', 'cli.js');
  if (!fs.existsSync(cli)) fail(`${path.relative(ROOT, cli)} does not exist: compile first (npx tsc -p tsconfig.json) or leave out --no-build`);
  // Not a terminal and no colours: commander then wraps at 80 columns and prints plain text.
  const env = { ...process.env, NO_COLOR: '1' };
  delete env.FORCE_COLOR;
  delete env.CLICOLOR_FORCE;
  delete env.COLUMNS;
  return HELP_PAGES.map((page) => {
    try {
      const text = execFileSync(process.execPath, [cli, ...page.args], { cwd: ROOT, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      return { ...page, text };
    } catch (err) {
      return fail(`node dist/lib/cli.js ${page.args.join(' ')} failed (exit ${err.status}):\n${err.stderr ?? err.message}`);
    }
  });
}

// ---------------------------------------------------------------------------------------------

function fail(message) {
  process.stderr.write(`gen-option-tables: ${message}\n`);
  process.exit(1);
}

function main(argv) {
  const unknown = argv.filter((a) => a !== '--no-build' && a !== '--check');
  if (unknown.length) fail(`unknown argument ${unknown[0]} (usage: ${COMMAND} [--no-build] [--check])`);
  if (!argv.includes('--no-build')) build();

  const program = createProgram();
  const checker = program.getTypeChecker();
  const declared = findInterfaces(program);
  const infos = [];
  for (const spec of INTERFACES) {
    const decl = declared.get(spec.name);
    if (!decl) {
      if (spec.optional) {
        process.stderr.write(`note: ${spec.name} is not declared in lib/; its table is left out\n`);
        continue;
      }
      fail(`interface ${spec.name} is not declared in lib/ (update INTERFACES in ${path.relative(ROOT, __filename)})`);
    }
    infos.push({ ...describeInterface(decl, checker), usedBy: spec.usedBy });
  }
  const longCallDecl = declared.get(LONG_CALL);
  if (!longCallDecl) fail(`interface ${LONG_CALL} is not declared in lib/`);
  const longCall = { ...describeInterface(longCallDecl, checker), usedBy: ['every long call'] };
  // LongCallOptions carries no doc comments; these say what lib/progress.ts and shared/spec/API.md define.
  const LONG_CALL_DOCS = {
    signal: 'Cancels the call: it rejects with a `WanError` of code `WAN_ABORTED`.',
    onProgress: 'Called with `{ stage, step, totalSteps, fraction, elapsedMs, etaMs }` as the call advances.',
  };
  for (const m of longCall.members) if (!m.jsdoc && !m.trailing && LONG_CALL_DOCS[m.name]) m.jsdoc = LONG_CALL_DOCS[m.name];

  const files = [
    [OPTIONS_MD, optionsMarkdown(infos, longCall)],
    [CLI_MD, cliMarkdown(helpPages())],
  ];
  if (argv.includes('--check')) {
    const stale = files.filter(([file, text]) => !fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== text);
    for (const [file] of stale) process.stderr.write(`${path.relative(ROOT, file)} is out of date: run ${COMMAND}\n`);
    process.exit(stale.length ? 1 : 0);
  }
  fs.mkdirSync(path.dirname(OPTIONS_MD), { recursive: true });
  for (const [file, text] of files) {
    fs.writeFileSync(file, text);
    process.stdout.write(`wrote ${path.relative(ROOT, file)}\n`);
  }
}

main(process.argv.slice(2));
