// The demo model set (models/demo, trained by tools/train-demo; issue 9): what its training
// clips show, the prompts composed from their attributes, and the generate options the demo
// runs it with. models/demo/demo.json is the one source of those facts for the trainer (C++),
// its tools (prepare.ts, contact-sheet.ts), the demo command and its test.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** models/demo: dist/lib/demo.js and lib/demo.ts both sit two folders below the package root. */
export const DEMO_DIR = path.join(__dirname, '..', '..', 'models', 'demo');

export const DEMO_FILES = {
  dit: 'wan-demo-dit.safetensors',
  t5: 'umt5-demo.safetensors',
  vae: 'wan-demo-vae.safetensors',
} as const;

export type Rgb = [number, number, number];

export interface DemoSpec {
  data: {
    size: number;
    frames: number;
    colours: { name: string; rgb: Rgb }[];
    shapes: string[];
    motions: string[];
    backgrounds: { name: string; top: Rgb; bottom: Rgb }[];
    /** Object colours closer than this (RGB distance) to their background's mean are not drawn. */
    minContrast: number;
    /** [colour, shape, motion, background] combinations the DiT never saw: the test's prompts. */
    heldOut: [string, string, string, string][];
  };
  /** The demo's default prompt. */
  prompt: string;
  /** Library option values for `wan-native demo` (GenerateSettings names). */
  generate: Record<string, number | string>;
}

export interface ClipAttributes {
  colour: string;
  shape: string;
  motion: string;
  background: string;
}

export function readDemoSpec(dir = DEMO_DIR): DemoSpec {
  return JSON.parse(fs.readFileSync(path.join(dir, 'demo.json'), 'utf8')) as DemoSpec;
}

const MOTION_WORDS: Record<string, string> = {
  left: 'moving left', right: 'moving right', up: 'moving up', down: 'moving down',
};

/** How a prompt says a motion: "moving right", "growing". */
export function motionPhrase(motion: string): string {
  return MOTION_WORDS[motion] ?? motion;
}

/** The words of a prompt that no demo training caption has ("pink", "elephant"). */
export function unknownDemoWords(prompt: string, spec: DemoSpec = readDemoSpec()): string[] {
  const known = new Set(['a', 'on', 'background']);
  const phrases = [...spec.data.colours.map((c) => c.name), ...spec.data.shapes, ...spec.data.motions.map(motionPhrase),
    ...spec.data.backgrounds.map((b) => b.name)];
  for (const p of phrases) for (const w of p.toLowerCase().split(/\s+/)) known.add(w);
  const words = prompt.toLowerCase().split(/[^a-z]+/).filter((w) => w.length > 0);
  return [...new Set(words.filter((w) => !known.has(w)))];
}

/** "a red circle moving right on a dark blue background" */
export function demoPrompt(a: ClipAttributes): string {
  return `a ${a.colour} ${a.shape} ${motionPhrase(a.motion)} on a ${a.background} background`;
}

/** The background's mean colour. */
export function backgroundColour(spec: DemoSpec, name: string): Rgb {
  const bg = spec.data.backgrounds.find((b) => b.name === name);
  if (!bg) throw new Error(`demo: no background named ${name}`);
  return bg.top.map((v, i) => (v + bg.bottom[i]) / 2) as Rgb;
}

export function rgbDistance(a: Rgb, b: Rgb): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}

/** Every combination the DiT trains on, in a fixed order, each with its attribute indices
 * (colour, shape, motion, background): all visible combinations but the held-out ones. */
export function trainingCombinations(spec: DemoSpec): { attributes: ClipAttributes; indices: number[] }[] {
  const d = spec.data;
  const held = new Set(d.heldOut.map((h) => h.join('|')));
  const out: { attributes: ClipAttributes; indices: number[] }[] = [];
  d.colours.forEach((colour, ci) => d.shapes.forEach((shape, si) => d.motions.forEach((motion, mi) =>
    d.backgrounds.forEach((bg, bi) => {
      if (rgbDistance(colour.rgb, backgroundColour(spec, bg.name)) < d.minContrast) return;
      if (held.has([colour.name, shape, motion, bg.name].join('|'))) return;
      out.push({ attributes: { colour: colour.name, shape, motion, background: bg.name }, indices: [ci, si, mi, bi] });
    }))));
  return out;
}

/** The `generate` arguments the demo runs with, given the user's own: paths of the shipped
 * files and the spec's settings, each left out where the user gave that flag. */
export function demoGenerateArgs(prompt: string, userArgs: string[], dir = DEMO_DIR): string[] {
  const spec = readDemoSpec(dir);
  const flagOf = (key: string) => '--' + key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
  const given = new Set(userArgs.filter((a) => a.startsWith('--')).map((a) => a.split('=')[0]));
  const preset: [string, string][] = [
    ['--model', path.join(dir, DEMO_FILES.dit)],
    ['--t5', path.join(dir, DEMO_FILES.t5)],
    ['--vae', path.join(dir, DEMO_FILES.vae)],
    // The demo vocabulary is lowercase words (tools/train-demo/prepare.ts).
    ['--prompt', prompt.toLowerCase()],
    ...Object.entries(spec.generate).map(([key, value]) => [flagOf(key), String(value)] as [string, string]),
  ];
  const args: string[] = [];
  for (const [flag, value] of preset) if (!given.has(flag)) args.push(flag, value);
  if (!given.has('--format')) args.push('--format', 'gif', '--format', 'mp4');
  if (!given.has('--filename-prefix')) args.push('--filename-prefix', 'wan-demo');
  return [...args, ...userArgs];
}
