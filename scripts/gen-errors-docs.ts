// Renders docs/errors.md from the one error table in src/errors.ts: `npm run docs:errors`.
// src/errors.test.ts fails when the committed file differs from this output.

import { writeFileSync } from 'node:fs';
import { errorTable, EXIT_RUNTIME, EXIT_USAGE } from '../src/errors.ts';

// `<name>` placeholders would read as HTML tags in Markdown.
const cell = (text: string) =>
  text.replaceAll('|', '\\|').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('\n', ' ');

export function errorsDocs(): string {
  const out = [
    '# Errors',
    '',
    '<!-- Generated from src/errors.ts by `npm run docs:errors`; do not edit by hand. -->',
    '',
    'Every error Stratum raises has a stable code, listed here once. Logs carry it as `code`, tests assert on it,',
    'and an error that becomes an HTTP answer has the status shown (the body is the status text; the log line',
    'says why). In the messages, `<name>` stands for a value filled in at run time; *data* names the fields an',
    'error object carries besides its message (for example `err.path` of `STRATUM_ERR_CONFIG`).',
    '',
    `Exit codes are the same for every command: \`0\` ok, \`${EXIT_RUNTIME}\` runtime failure, ` +
      `\`${EXIT_USAGE}\` usage or configuration.`,
    'A command that fails prints one line on stderr, `stratum: <message>`, and exits with the code shown',
    '(an error with an HTTP status is an answer to one request and ends no command).',
    '',
  ];
  let area = '';
  const table = errorTable();
  for (const [i, e] of table.entries()) {
    if (e.area !== area) {
      area = e.area;
      out.push(`## ${area}`, '', '| code | HTTP | exit | message | data |', '| --- | --- | --- | --- | --- |');
    }
    const data = e.data.map((d) => `\`${d}\``).join(', ');
    const message = cell(e.template) + (e.hint ? `<br>*${cell(e.hint)}*` : '');
    out.push(`| \`${e.code}\` | ${e.status ?? '—'} | ${e.status === null ? e.exit : '—'} | ${message} | ${data} |`);
    if (table[i + 1]?.area !== area) out.push('');
  }
  return out.join('\n');
}

if (import.meta.main) {
  const target = new URL('../docs/errors.md', import.meta.url);
  writeFileSync(target, errorsDocs());
  console.log(`wrote ${target.pathname}`);
}
