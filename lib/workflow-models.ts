// Model and input file names of a ComfyUI workflow, resolved against folders given by the
// caller, as ComfyUI resolves them against its models/<kind> folders (folder_paths.py): a name
// is relative to one of the kind's folders ("WanVideo/wan2.1_t2v.safetensors", Windows
// separators included), tried exactly first, then by its file name anywhere under the folders.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describeValue, invalidOption, WanError } from './errors';

/** ComfyUI's model folder kinds the nodes read, and `input` for LoadImage. */
export type ModelFolder = 'diffusion_models' | 'text_encoders' | 'vae' | 'clip_vision' | 'loras' | 'input';
export const MODEL_FOLDERS: readonly ModelFolder[] = ['diffusion_models', 'text_encoders', 'vae', 'clip_vision', 'loras', 'input'];

/** Folders per kind, or one list searched for every kind. */
export type ModelDirs = Partial<Record<ModelFolder, string[]>> | string[];

// How deep the file-name search goes below each folder (ComfyUI lists its folders recursively;
// a bound keeps a folder given by mistake, such as /, from being walked whole).
const MAX_DEPTH = 8;

export function checkModelDirs(dirs: unknown): ModelDirs {
  if (dirs === undefined) return [];
  const checkList = (list: unknown, what: string): string[] => {
    if (!Array.isArray(list) || !list.every((d) => typeof d === 'string' && d !== ''))
      throw invalidOption(`Expected an array of folder paths for ${what} but received ${describeValue(list)}`);
    return list.map((d) => path.resolve(d));
  };
  if (Array.isArray(dirs)) return checkList(dirs, 'modelDirs');
  if (typeof dirs !== 'object' || dirs === null)
    throw invalidOption(`Expected an array of folders or an object of folder lists per kind for modelDirs but received ${describeValue(dirs)}`);
  const out: Partial<Record<ModelFolder, string[]>> = {};
  for (const [key, list] of Object.entries(dirs)) {
    if (!(MODEL_FOLDERS as readonly string[]).includes(key))
      throw invalidOption(`Expected modelDirs keys among ${MODEL_FOLDERS.join(', ')} but received ${describeValue(key)}`);
    out[key as ModelFolder] = checkList(list, `modelDirs.${key}`);
  }
  return out;
}

function foldersFor(dirs: ModelDirs, kinds: readonly ModelFolder[]): string[] {
  const list = Array.isArray(dirs) ? dirs : kinds.flatMap((k) => dirs[k] ?? []);
  return [...new Set(list)];
}

function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

// Files named `base` under `root`, breadth first, hidden folders skipped.
function findByName(root: string, base: string): string[] {
  const found: string[] = [];
  let level = [root];
  for (let depth = 0; depth <= MAX_DEPTH && level.length > 0; depth++) {
    const next: string[] = [];
    for (const dir of level) {
      let entries: fs.Dirent[];
      try {
        entries = fs.readdirSync(dir, { withFileTypes: true });
      } catch {
        continue;
      }
      for (const e of entries) {
        if (e.name.startsWith('.')) continue;
        const full = path.join(dir, e.name);
        if (e.name === base && isFile(full)) found.push(full);
        else if (e.isDirectory() || (e.isSymbolicLink() && isDirectory(full))) next.push(full);
      }
    }
    level = next.sort();
  }
  return found.sort();
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/**
 * The file a node's model (or image) name refers to. `where` names the node and input for
 * messages: `node 3 (WanVideoVAELoader) model_name`.
 */
export function resolveModelFile(name: string, kinds: readonly ModelFolder[], dirs: ModelDirs, where: string): string {
  // LoadImage names may carry ComfyUI's folder annotation: "photo.png [input]".
  const clean = name.replace(/ \[(input|output|temp)\]$/, '').replace(/\\/g, '/');
  const segments = clean.split('/').filter((s) => s !== '' && s !== '.');
  if (segments.length === 0 || segments.includes('..') || path.isAbsolute(clean))
    throw invalidOption(`${where}: expected a file name relative to the ${kinds.join(' or ')} folders but received ${describeValue(name)}`);
  const folders = foldersFor(dirs, kinds);
  const option = Array.isArray(dirs) ? 'modelDirs' : kinds.map((k) => `modelDirs.${k}`).join(' or ');
  if (folders.length === 0)
    throw new WanError('WAN_IO', `${where}: cannot look for "${name}": no ${kinds.join(' or ')} folders were given (${option})`);
  const relative = path.join(...segments);
  for (const dir of folders) {
    const file = path.join(dir, relative);
    if (isFile(file)) return file;
  }
  const base = segments[segments.length - 1];
  for (const dir of folders) {
    const found = findByName(dir, base);
    if (found.length === 1) return found[0];
    if (found.length > 1)
      throw invalidOption(`${where}: "${name}" is ambiguous: ${found.length} files named ${base} under ${dir} (${found.join(', ')}); ` +
        'give its path relative to the folder');
  }
  throw new WanError('WAN_IO', `${where}: "${name}" not found: looked for ${relative} in ${folders.join(', ')} ` +
    `(${option}) and for a file named ${base} below them`);
}
