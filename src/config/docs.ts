// Renders docs/config.md from the schema (through zod's JSON Schema of the *input*, i.e. what a
// user writes), plus the environment and flag overrides from load.ts. Nothing here is hand-copied
// from the schema: change a field or its .describe() and `npm run docs:config` follows.

import { z } from 'zod';
import { ENV_OVERRIDES, FLAG_OVERRIDES } from './load.ts';
import { schema } from './schema.ts';

type Node = {
  type?: string | string[];
  anyOf?: Node[];
  enum?: unknown[];
  items?: Node;
  properties?: Record<string, Node>;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  pattern?: string;
  default?: unknown;
  description?: string;
  docType?: string;
  docDefault?: string;
};

type Row = { path: string; node: Node };

const ROUTES_EXAMPLE = [
  'For example:',
  '',
  '```yaml',
  'routes:',
  '  - path: /static/',
  '    target: static:./public          # files, relative to this config file',
  '  - host: api.example.com',
  '    target:                          # two external uWSGI servers, balanced',
  '      - uwsgi://10.0.0.1:3031',
  '      - uwsgi://10.0.0.2:3031',
  '    readTimeout: 300',
  '  - path: /',
  '    target: pool                     # the built-in worker pool running app.module',
  '```',
  '',
];

export function configDocs(): string {
  const root = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as Node;
  const out: string[] = [
    '<!-- Generated from src/config/schema.ts by `npm run docs:config`. Do not edit by hand. -->',
    '',
    '# Configuration reference',
    '',
    'Stratum reads one YAML file (`stratum serve --config config/stratum.yaml`). Every field is optional and has ' +
      'the default shown;',
    'unknown fields are errors. Values come from, in increasing precedence: the defaults below, the YAML file, ' +
      'environment',
    'variables, command-line flags. `stratum check --config FILE` validates a file without running anything (like ' +
      '`nginx -t`);',
    'an error names the field, e.g. `stratum: pool.workers: expected an integer >= 1, got "abc"`.',
    '',
    'Types used below:',
    '',
    '- **address**: `HOST:PORT` (`[::1]:8080` for IPv6; port 0 lets the OS pick) or a Unix socket path (anything ' +
      'containing `/`).',
    '- **size**: a number of bytes, or a string with a `k`, `m` or `g` suffix like nginx sizes (`"512k"`, `"100m"`, ' +
      '`"1g"`).',
    '- **seconds**: a number of seconds; fractions are allowed.',
    '',
    'Relative paths (`app.module`, a Unix `pool.socket`, `unix:` and `static:` targets) resolve against the ' +
      'directory of the',
    'config file when they come from it, and against the working directory when they come from flags or the ' +
      'environment.',
    '',
  ];

  const top: Row[] = [];
  const sections: { name: string; node: Node }[] = [];
  for (const [key, node] of Object.entries(root.properties ?? {})) {
    if (node.properties || node.items?.properties) sections.push({ name: key, node });
    else top.push({ path: key, node });
  }

  out.push('## Top level', '', ...table(top), '');
  for (const { name, node } of sections) {
    out.push(`## \`${name}\``, '');
    if (node.description) out.push(node.description, '');
    if (node.items?.properties) {
      out.push(`Default: \`${JSON.stringify(node.default)}\`. Each entry has:`, '');
      out.push(...table(rows(node.items, `${name}[]`)), '');
      if (name === 'routes') out.push(...ROUTES_EXAMPLE);
    } else {
      out.push(...table(rows(node, name)), '');
    }
  }

  out.push('## Environment variables', '', '| Variable | Sets |', '|---|---|');
  for (const [name, o] of Object.entries(ENV_OVERRIDES)) out.push(`| \`${name}\` | \`${o.path}\` |`);
  out.push(
    '',
    '## Command-line flags',
    '',
    'For `stratum serve`, `pool`, `proxy` and `check`; see `stratum <command> --help`.',
    '',
  );
  out.push('| Flag | Sets |', '|---|---|', '| `--config FILE` | the YAML file to read (none by default) |');
  for (const o of Object.values(FLAG_OVERRIDES)) out.push(`| ${cell(`\`${o.flag} ${o.value}\``)} | \`${o.path}\` |`);
  out.push(
    "| `--route PREFIX=TARGET` | `routes`, repeatable; replaces the file's routes. PREFIX is a path (`/api`) or " +
      '`host/path` (`api.example.com/v1`, `*.example.com`); several uwsgi targets are separated by commas |',
    '',
  );
  return out.join('\n');
}

/** Rows for the fields of a mapping, sub-mappings flattened into dotted paths. */
function rows(node: Node, prefix: string): Row[] {
  const result: Row[] = [];
  for (const [key, child] of Object.entries(node.properties ?? {})) {
    const path = `${prefix}.${key}`;
    if (child.properties) {
      result.push({ path, node: { ...child, type: 'mapping' } });
      result.push(...rows(child, path));
    } else {
      result.push({ path, node: child });
    }
  }
  return result;
}

function table(list: Row[]): string[] {
  const lines = ['| Field | Type | Default | Description |', '|---|---|---|---|'];
  for (const { path, node } of list) {
    const def =
      node.docDefault ??
      (node.type === 'mapping'
        ? ''
        : node.default === undefined
          ? '*required*'
          : `\`${JSON.stringify(node.default)}\``);
    lines.push(`| \`${path}\` | ${cell(typeOf(node))} | ${cell(def)} | ${cell(node.description ?? '')} |`);
  }
  return lines;
}

function cell(text: string): string {
  return text.replaceAll('|', '\\|').replaceAll('\n', ' ');
}

function typeOf(node: Node): string {
  if (node.docType) return node.docType;
  if (node.anyOf) return node.anyOf.map(typeOf).join(' | ');
  if (node.enum) return node.enum.map((v) => JSON.stringify(v)).join(' | ');
  if (Array.isArray(node.type)) return node.type.map((t) => typeOf({ ...node, type: t })).join(' | ');
  switch (node.type) {
    case 'integer':
    case 'number':
      return `${node.type}${range(node)}`;
    case 'array':
      return `${node.items ? typeOf(node.items) : 'unknown'}[]`;
    case 'string':
      return node.pattern ? `string matching \`${node.pattern}\`` : 'string';
    default:
      return node.type ?? 'any';
  }
}

function range(node: Node): string {
  const max = node.maximum !== undefined && node.maximum < Number.MAX_SAFE_INTEGER ? node.maximum : undefined;
  if (node.minimum !== undefined && max !== undefined) return ` ${node.minimum}..${max}`;
  if (node.minimum !== undefined) return ` ≥ ${node.minimum}`;
  if (node.exclusiveMinimum !== undefined) return ` > ${node.exclusiveMinimum}`;
  if (max !== undefined) return ` ≤ ${max}`;
  return '';
}
