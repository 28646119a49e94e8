// The deployment files (deploy/, .dockerignore) checked against the real tools and the real
// service: promtool for the Prometheus config and alerts, a live stratum for every metric name the
// dashboard and alerts query, the Dockerfile's runtime stage replayed outside Docker to show that
// its CMD serves and its HEALTHCHECK passes, and the health check script against a live stratum.
// The image itself is built and run by deploy/test-image.sh (CI runs it from .ci/run).
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { afterAll, describe, expect, it, type TestContext } from 'vitest';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { describeOutput, freePort, isRunning, killLeftovers, makeTempDir, spawnTracked, type Tracked } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum } from '../helpers/stratum.ts';

const DEPLOY = join(REPO_ROOT, 'deploy');
const read = (path: string) => readFileSync(join(REPO_ROOT, path), 'utf8');
type Tree = Record<string, any>;

afterAll(killLeftovers);

// --- promtool -----------------------------------------------------------------------------------

const PROMTOOL = process.env.PROMTOOL ?? 'promtool';

/** Runs promtool, or skips the test (fails it in CI, where the `prometheus` package is installed). */
function promtool(ctx: TestContext, args: string[]): { status: number | null; output: string } {
  const probe = spawnSync(PROMTOOL, ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    const reason = `promtool not found (${probe.error?.message ?? `exit ${probe.status}`}); install the Debian "prometheus" package or set PROMTOOL`;
    if (process.env.CI) throw new Error(reason);
    console.warn(`skipped: ${reason}`);
    ctx.skip(reason);
  }
  const r = spawnSync(PROMTOOL, args, { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

// --- PromQL used by the dashboard and the alerts ------------------------------------------------

/** Prometheus makes these itself; no exporter has them. */
const SYNTHETIC_METRICS = new Set(['up']);

const PROMQL_KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan', 'start', 'end']);

/**
 * Metric names in a PromQL expression (or a Grafana `label_values(selector, label)` query).
 * Not a parser: strings, label matchers, ranges and grouping clauses are cut out, and what is
 * left that names no function or keyword is a metric. promtool checks the syntax separately.
 */
function metricNames(expr: string): string[] {
  let e = expr.replace(/\blabel_values\(\s*([^,()]*(?:\{[^}]*\})?)\s*,\s*\w+\s*\)/g, '$1');
  e = e.replace(/\blabel_values\(\s*\w+\s*\)/g, '');
  e = e
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\$\{[^}]*\}|\$\w+/g, '')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '')
    .replace(/\boffset\s+-?[\dsmhdwy]+/g, '');
  const names = new Set<string>();
  for (const m of e.matchAll(/(?<![\w.:])[a-zA-Z_:][\w:]*/g)) {
    const after = e.slice(m.index + m[0].length);
    if (/^\s*\(/.test(after) || PROMQL_KEYWORDS.has(m[0].toLowerCase())) continue;
    names.add(m[0]);
  }
  return [...names];
}

function dashboard(): Tree {
  return JSON.parse(read('deploy/grafana/dashboards/stratum.json')) as Tree;
}

/** Every PromQL expression of the dashboard: panel targets, annotations, and query variables. */
function dashboardQueries(d: Tree): Array<{ where: string; expr: string; promql: boolean }> {
  const out: Array<{ where: string; expr: string; promql: boolean }> = [];
  const walk = (node: unknown, where: string) => {
    if (Array.isArray(node)) node.forEach((n, i) => walk(n, `${where}[${i}]`));
    else if (node && typeof node === 'object') {
      for (const [k, v] of Object.entries(node)) {
        if (k === 'expr' && typeof v === 'string') out.push({ where, expr: v, promql: true });
        else walk(v, `${where}.${k}`);
      }
    }
  };
  walk(d.panels, 'panels');
  walk(d.annotations, 'annotations');
  for (const v of (d.templating?.list ?? []) as Tree[]) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    if (typeof q === 'string') out.push({ where: `templating.${v.name}`, expr: q, promql: !q.startsWith('label_values(') });
  }
  return out;
}

function alertRules(): Tree[] {
  const doc = parse(read('deploy/prometheus/alerts.yml')) as Tree;
  return (doc.groups as Tree[]).flatMap((g) => g.rules as Tree[]);
}

/** Names a /metrics body exports; histograms and summaries with their _bucket/_sum/_count series. */
function exportedNames(body: string): Set<string> {
  const names = new Set<string>();
  for (const line of body.split('\n')) {
    const type = /^# TYPE (\S+) (\w+)/.exec(line);
    if (type) {
      const [, name, kind] = type as unknown as [string, string, string];
      names.add(name);
      if (kind === 'histogram' || kind === 'gaugehistogram') for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
      if (kind === 'summary') for (const s of ['_sum', '_count']) names.add(name + s);
      if (kind === 'counter' && !name.endsWith('_total')) names.add(`${name}_total`); // OpenMetrics drops the suffix from TYPE
      continue;
    }
    const sample = /^([a-zA-Z_:][\w:]*)[{ ]/.exec(line);
    if (sample) names.add(sample[1]!);
  }
  return names;
}

describe('Prometheus config and alerts', () => {
  it('promtool accepts prometheus.yml and alerts.yml', (ctx) => {
    const config = promtool(ctx, ['check', 'config', 'deploy/prometheus/prometheus.yml']);
    expect(config.status, config.output).toBe(0);
    const rules = promtool(ctx, ['check', 'rules', 'deploy/prometheus/alerts.yml']);
    expect(rules.status, rules.output).toBe(0);
  });

  it('the alerts fire when their unit tests say (promtool test rules)', (ctx) => {
    const r = promtool(ctx, ['test', 'rules', 'deploy/prometheus/alerts.test.yml']);
    expect(r.status, r.output).toBe(0);
  });

  it('alerts cover 5xx ratio, slow layers, harakiri, rejections, workers down and upstream down', () => {
    const rules = alertRules();
    const byName = new Map(rules.map((r) => [r.alert as string, r]));
    for (const [alert, metric] of [
      ['StratumHighErrorRatio', 'stratum_requests_total'],
      ['StratumLayerSlow', 'stratum_layer_duration_seconds_bucket'],
      ['StratumHarakiriKills', 'stratum_harakiri_kills_total'],
      ['StratumQueueRejections', 'stratum_queue_rejections_total'],
      ['StratumNoServingWorkers', 'stratum_workers'],
      ['StratumUpstreamDown', 'stratum_upstream_up'],
    ] as const) {
      expect(byName.get(alert), alert).toBeDefined();
      expect(metricNames(byName.get(alert)!.expr as string)).toContain(metric);
    }
    for (const r of rules) {
      expect(['critical', 'warning'], r.alert).toContain(r.labels?.severity);
      expect(r.annotations?.summary, r.alert).toBeTruthy();
    }
  });

  it('scrapes stratum on the admin port compose.yaml opens', () => {
    const prom = parse(read('deploy/prometheus/prometheus.yml')) as Tree;
    const job = (prom.scrape_configs as Tree[]).find((j) => j.job_name === 'stratum')!;
    expect(job.metrics_path ?? '/metrics').toBe('/metrics');
    expect(job.static_configs[0].targets).toEqual(['stratum:9900']);
    expect(prom.rule_files).toContain('alerts.yml');
    const compose = parse(read('deploy/compose.yaml')) as Tree;
    expect(compose.services.stratum.environment.STRATUM_ADMIN).toBe('0.0.0.0:9900');
  });
});

describe('Grafana dashboard', () => {
  it('parses, and every panel has a unique id, a place on the grid and queries', () => {
    const d = dashboard();
    expect(d.uid).toBe('stratum');
    const panels = d.panels as Tree[];
    expect(panels.length).toBeGreaterThan(10);
    expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
    for (const p of panels) {
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
      if (p.type !== 'row') expect(p.targets?.length, p.title).toBeGreaterThan(0);
    }
    const titles = panels.map((p) => p.title as string).join('\n');
    for (const t of ['Layer latency p50', 'Layer latency p95', 'Layer latency p99', 'Average time per layer', 'Request rate by status class', 'Error ratio', 'Workers by state', 'In flight', 'Queue length', 'Worker lifecycle events', 'Queue rejections', 'Upstream errors', 'Upstream health', 'Event-loop lag']) {
      expect(titles).toContain(t);
    }
  });

  it('queries per-layer quantiles from stratum_layer_duration_seconds by layer', () => {
    const exprs = dashboardQueries(dashboard()).map((q) => q.expr);
    for (const p of ['0.5', '0.95', '0.99']) {
      expect(exprs.some((e) => e.startsWith(`histogram_quantile(${p},`) && /by \((?:layer, le|le, layer)\)/.test(e) && e.includes('stratum_layer_duration_seconds_bucket'))).toBe(true);
    }
  });

  it('every PromQL expression of the dashboard parses (promtool)', (ctx) => {
    // promtool has no "parse this expression"; a recording rule per query gets the same check.
    const rules = dashboardQueries(dashboard())
      .filter((q) => q.promql)
      .map((q, i) => ({ record: `dashboard:query_${i}`, expr: q.expr.replace(/\$__(?:rate_interval|interval|range)\b/g, '5m') }));
    const dir = makeTempDir('promql');
    const file = join(dir, 'dashboard-rules.yml');
    writeFileSync(file, stringify({ groups: [{ name: 'dashboard', rules }] }));
    const r = promtool(ctx, ['check', 'rules', file]);
    expect(r.status, r.output).toBe(0);
  });

  it('provisioning points Grafana at the prometheus service and at the mounted dashboards', () => {
    const ds = parse(read('deploy/grafana/provisioning/datasources/prometheus.yml')) as Tree;
    expect(ds.apiVersion).toBe(1);
    expect(ds.datasources[0]).toMatchObject({ type: 'prometheus', url: 'http://prometheus:9090' });
    const provider = (parse(read('deploy/grafana/provisioning/dashboards/stratum.yml')) as Tree).providers[0];
    const compose = parse(read('deploy/compose.yaml')) as Tree;
    const mounts = compose.services.grafana.volumes as string[];
    expect(mounts).toContain(`./grafana/dashboards:${provider.options.path}:ro`);
    expect(mounts.some((m) => m.startsWith('./grafana/provisioning:/etc/grafana/provisioning'))).toBe(true);
  });
});

describe('metric names', () => {
  it('the name extractor finds metrics, not functions, labels or Grafana variables', () => {
    expect(metricNames('histogram_quantile(0.99, sum by (le, layer) (rate(stratum_layer_duration_seconds_bucket{route=~"$route", x="a b"}[$__rate_interval])))'))
      .toEqual(['stratum_layer_duration_seconds_bucket']);
    expect(metricNames('sum(rate(a_total[5m])) / on(instance) group_left(x) sum(b) > 1e3 and c offset 5m')).toEqual(['a_total', 'b', 'c']);
    expect(metricNames('label_values(stratum_requests_total{instance=~"$instance"}, route)')).toEqual(['stratum_requests_total']);
  });

  it('every metric the dashboard and the alerts query is exported by a live stratum', async () => {
    const used = new Map<string, string[]>(); // metric -> where it is used
    const note = (name: string, where: string) => used.set(name, [...(used.get(name) ?? []), where]);
    for (const q of dashboardQueries(dashboard())) for (const n of metricNames(q.expr)) note(n, `stratum.json ${q.where}`);
    for (const r of alertRules()) for (const n of metricNames(r.expr as string)) note(n, `alerts.yml ${r.alert}`);
    expect(used.size).toBeGreaterThan(10);

    // A route to a uwsgi server that is not there: the upstream health and error metrics get a target.
    const deadPort = await freePort();
    const s = await startStratum([
      'serve', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '2', '--app', 'examples/hello/app.ts',
      '--route', '/=pool', '--route', `/ext=uwsgi://127.0.0.1:${deadPort}`,
    ]);
    try {
      const statuses: number[] = [];
      for (const path of ['/', '/', '/', '/slow?ms=5', '/no-such-page', '/fail', '/ext']) {
        const res = await fetch(`${s.front}${path}`);
        await res.arrayBuffer();
        statuses.push(res.status);
      }
      expect(statuses.slice(0, 6)).toEqual([200, 200, 200, 200, 404, 500]);
      expect(statuses[6]).toBeGreaterThanOrEqual(500);

      const res = await fetch(`${s.admin}/metrics`);
      const body = await res.text();
      expect(res.status, body.slice(0, 500)).toBe(200);
      const exported = exportedNames(body);
      const missing = [...used].filter(([n]) => !exported.has(n) && !SYNTHETIC_METRICS.has(n)).map(([n, where]) => `${n} (${where[0]}${where.length > 1 ? ` and ${where.length - 1} more` : ''})`);
      expect(missing, `exported: ${[...exported].filter((n) => n.startsWith('stratum_')).join(', ')}`).toEqual([]);
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });
});

describe('compose.yaml', () => {
  const compose = () => parse(read('deploy/compose.yaml')) as Tree;

  it('parses and runs stratum, prometheus, grafana and jaeger', () => {
    const c = compose();
    expect(Object.keys(c.services).sort()).toEqual(['grafana', 'jaeger', 'prometheus', 'stratum']);
    for (const [name, svc] of Object.entries(c.services as Record<string, Tree>)) {
      if (name !== 'stratum') expect(svc.image, name).toMatch(/:[\w.-]+$/); // pinned, not :latest
      expect(svc.image, name).not.toMatch(/:latest$/);
    }
  });

  it('builds stratum from deploy/Dockerfile with the repository as context', () => {
    const build = compose().services.stratum.build;
    expect(resolve(DEPLOY, build.context)).toBe(resolve(REPO_ROOT));
    expect(existsSync(join(resolve(DEPLOY, build.context), build.dockerfile))).toBe(true);
  });

  it('exposes the admin surface only with a token, sends traces to jaeger and mounts files that exist', () => {
    const c = compose();
    const env = c.services.stratum.environment as Record<string, string>;
    expect(env.STRATUM_ADMIN).toBe('0.0.0.0:9900');
    expect(env.STRATUM_ADMIN_TOKEN).toMatch(/^\$\{STRATUM_ADMIN_TOKEN:\?/); // compose refuses to start without it
    expect(env.OTEL_EXPORTER_OTLP_ENDPOINT).toBe('http://jaeger:4318');
    expect(c.services.stratum.ports).toContain('127.0.0.1:9900:9900');
    const mounted = (c.services.stratum.volumes as string[]).find((v) => v.endsWith(':/etc/stratum/stratum.yaml:ro'))!;
    const config = parse(readFileSync(join(DEPLOY, mounted.split(':')[0]!), 'utf8')) as Tree;
    expect(config.tracing.enabled).toBe(true);
    expect(config.admin.metricsPublic).toBe(true);
    for (const svc of Object.values(c.services as Record<string, Tree>)) {
      for (const v of (svc.volumes ?? []) as string[]) {
        if (v.startsWith('./')) expect(existsSync(join(DEPLOY, v.split(':')[0]!)), v).toBe(true);
      }
    }
  });
});

describe('Kubernetes manifests', () => {
  const K8S = join(DEPLOY, 'kubernetes');
  const docs = (): Tree[] =>
    readdirSync(K8S).filter((f) => f.endsWith('.yaml')).flatMap((f) => {
      const all = parseAllDocuments(readFileSync(join(K8S, f), 'utf8'));
      for (const d of all) expect(d.errors, f).toEqual([]);
      return all.map((d) => ({ ...(d.toJS() as Tree), __file: f }));
    });
  const find = (kind: string) => docs().find((d) => d.kind === kind)!;

  it('parse and hold a Deployment, Service, ServiceMonitor, HPA, ConfigMap and an example Secret', () => {
    const kinds = new Map(docs().map((d) => [d.kind as string, d.apiVersion as string]));
    expect(Object.fromEntries(kinds)).toMatchObject({
      Deployment: 'apps/v1',
      Service: 'v1',
      ServiceMonitor: 'monitoring.coreos.com/v1',
      HorizontalPodAutoscaler: 'autoscaling/v2',
      ConfigMap: 'v1',
      Secret: 'v1',
    });
    const kustomization = find('Kustomization');
    for (const r of kustomization.resources as string[]) expect(existsSync(join(K8S, r)), r).toBe(true);
    expect(kustomization.resources).not.toContain('secret.example.yaml');
  });

  it('probe /livez and /readyz on the admin port, which leaves loopback with a token from the Secret', () => {
    const deploy = find('Deployment');
    const pod = deploy.spec.template.spec;
    const c = pod.containers[0];
    const admin = c.ports.find((p: Tree) => p.name === 'admin');
    expect(admin.containerPort).toBe(9900);
    expect(c.livenessProbe.httpGet).toEqual({ path: '/livez', port: 'admin' });
    expect(c.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'admin' });
    const env = Object.fromEntries((c.env as Tree[]).map((e) => [e.name, e]));
    expect(env.STRATUM_ADMIN.value).toBe('0.0.0.0:9900');
    expect(env.STRATUM_ADMIN_TOKEN.valueFrom.secretKeyRef).toEqual({ name: find('Secret').metadata.name, key: 'token' });
    expect(c.resources.requests.cpu).toBeDefined();
    expect(c.resources.limits.memory).toBeDefined();
    expect(deploy.spec.template.metadata.annotations).toMatchObject({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '9900' });
  });

  it('give a pod longer to stop than the preStop sleep plus pool.gracefulTimeout', () => {
    const pod = find('Deployment').spec.template.spec;
    const config = parse(find('ConfigMap').data['stratum.yaml'] as string) as Tree;
    const sleep = Number(pod.containers[0].lifecycle.preStop.exec.command.at(-1));
    expect(sleep).toBeGreaterThanOrEqual(5);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(sleep + config.pool.gracefulTimeout);
  });

  it('select the Deployment\'s pods from the Service, the ServiceMonitor and the HPA', () => {
    const deploy = find('Deployment');
    const labels = deploy.spec.template.metadata.labels as Record<string, string>;
    expect(labels).toMatchObject(deploy.spec.selector.matchLabels);
    const service = find('Service');
    expect(labels).toMatchObject(service.spec.selector);
    const monitor = find('ServiceMonitor');
    expect(service.metadata.labels).toMatchObject(monitor.spec.selector.matchLabels);
    const portNames = (service.spec.ports as Tree[]).map((p) => p.name);
    expect(portNames).toContain(monitor.spec.endpoints[0].port);
    expect(monitor.spec.endpoints[0].path).toBe('/metrics');
    const hpa = find('HorizontalPodAutoscaler');
    expect(hpa.spec.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: deploy.metadata.name });
    expect(hpa.spec.metrics[0].resource.name).toBe('cpu');
    const pod = deploy.spec.template.spec;
    expect(pod.volumes.find((v: Tree) => v.configMap)?.configMap.name).toBe(find('ConfigMap').metadata.name);
  });
});

// --- the container image ------------------------------------------------------------------------

type Instruction = { op: string; args: string };
type Stage = { image: string; name: string | null; steps: Instruction[] };

/** Dockerfile → stages: continuation lines joined, comments dropped, global ARG defaults expanded in FROM. */
function parseDockerfile(text: string): Stage[] {
  const logical: string[] = [];
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#') || (line === '' && current === '')) continue;
    if (line.endsWith('\\')) current += `${line.slice(0, -1)} `;
    else {
      current += line;
      if (current.trim()) logical.push(current.trim());
      current = '';
    }
  }
  const globalArgs: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const l of logical) {
    const [op, ...rest] = l.split(/\s+/);
    const args = rest.join(' ');
    const upper = op!.toUpperCase();
    if (upper === 'ARG' && stages.length === 0) {
      const [k, v] = args.split('=');
      globalArgs[k!] = v ?? '';
    } else if (upper === 'FROM') {
      const m = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)!;
      const image = m[1]!.replace(/\$\{?(\w+)\}?/g, (_, k: string) => globalArgs[k] ?? '');
      stages.push({ image, name: m[2] ?? null, steps: [] });
    } else {
      stages.at(-1)!.steps.push({ op: upper, args });
    }
  }
  return stages;
}

function execForm(args: string, what: string): string[] {
  // Shell form would run /bin/sh as PID 1, which does not pass SIGTERM on to node.
  expect(args.startsWith('['), `${what} must use the exec (JSON) form`).toBe(true);
  return JSON.parse(args) as string[];
}

function waitForReady(t: Tracked, timeoutMs: number): Promise<Record<string, unknown>> {
  const started = Date.now();
  return new Promise((resolvePromise, reject) => {
    const poll = () => {
      for (const line of t.stdoutLines) {
        if (!line.startsWith('{')) continue;
        try {
          const entry = JSON.parse(line) as Record<string, unknown>;
          if (entry.msg === 'stratum ready') return resolvePromise(entry);
        } catch { /* not JSON */ }
      }
      if (!isRunning(t)) return reject(new Error(`the image's CMD exited before it was ready\n${describeOutput(t)}`));
      if (Date.now() - started > timeoutMs) return reject(new Error(`no "stratum ready" within ${timeoutMs} ms\n${describeOutput(t)}`));
      setTimeout(poll, 50);
    };
    poll();
  });
}

const replayed = new Map<Stage, string>();

/**
 * A build stage other than the first, replayed into dir (its /app): its COPY steps copy from the
 * repository, its RUN commands run there — except `npm ci`, for which the repository's own
 * node_modules stands in (the same lockfile, dev dependencies included). Nothing is written into
 * the repository, so a dist/ or dashboard/dist/ lying there is never what the test runs.
 */
function replayStage(stage: Stage, dir: string): string {
  const done = replayed.get(stage);
  if (done) return done;
  mkdirSync(dir, { recursive: true });
  symlinkSync(join(REPO_ROOT, 'node_modules'), join(dir, 'node_modules'));
  for (const step of stage.steps) {
    if (step.op === 'COPY') {
      expect(step.args, `stage ${stage.name}: COPY --from is not replayed`).not.toMatch(/--from=/);
      const paths = step.args.split(/\s+/).filter((p) => !p.startsWith('--'));
      const rawDest = paths.pop()!;
      const intoDir = paths.length > 1 || rawDest.endsWith('/');
      for (const src of paths) {
        const target = join(dir, rawDest, intoDir ? src.split('/').at(-1)! : '');
        cpSync(join(REPO_ROOT, src), target, { recursive: true, filter: (p) => !p.endsWith('.test.ts') });
      }
    } else if (step.op === 'RUN') {
      for (const command of step.args.split('&&').map((c) => c.trim())) {
        if (command.startsWith('npm ci')) continue;
        const r = spawnSync(command, { cwd: dir, shell: true, encoding: 'utf8', timeout: 120_000 });
        expect(r.status, `stage ${stage.name}: ${command}\n${r.stdout}${r.stderr}`).toBe(0);
      }
    }
  }
  replayed.set(stage, dir);
  return dir;
}

describe('container image', () => {
  const stages = () => parseDockerfile(read('deploy/Dockerfile'));

  it('builds on node:24 slim (bookworm), runs as node, exposes 8080 and 9900 and stops on SIGTERM', () => {
    const all = stages();
    expect(all.length).toBeGreaterThanOrEqual(2);
    for (const s of all) expect(s.image).toMatch(/^node:24-(bookworm-)?slim$/);
    expect(all[0]!.steps.some((s) => s.op === 'RUN' && /\bnpm ci\b.*--omit=dev/.test(s.args))).toBe(true);
    const runtime = all.at(-1)!.steps;
    const last = (op: string) => runtime.filter((s) => s.op === op).at(-1)?.args;
    expect(last('USER')).toBe('node');
    expect(last('WORKDIR')).toBe('/app');
    expect(last('EXPOSE')?.split(/\s+/).sort()).toEqual(['8080', '9900']);
    expect(last('STOPSIGNAL')).toBe('SIGTERM');
    // The probe derives the admin address (deploy/healthcheck.js), and the script is in the image.
    expect(last('HEALTHCHECK')).toMatch(/CMD \["node", "\/app\/deploy\/healthcheck\.js"\]$/);
    expect(runtime.some((s) => s.op === 'COPY' && s.args === 'deploy/healthcheck.js ./deploy/healthcheck.js')).toBe(true);
    expect(execForm(last('CMD')!, 'CMD')).toEqual(['node', 'bin/stratum-dist.js', 'serve', '--config', '/etc/stratum/stratum.yaml']);
    // The image runs the compiled build, and ships no sources it could run instead.
    const copied = runtime.filter((s) => s.op === 'COPY').map((s) => s.args.split(/\s+/).filter((p) => !p.startsWith('--')).slice(0, -1)).flat();
    expect(copied.some((p) => p.endsWith('/dist'))).toBe(true);
    expect(copied.some((p) => /(^|\/)src$/.test(p))).toBe(false);
    expect(runtime.some((s) => s.op === 'COPY' && s.args.endsWith(' /etc/stratum/stratum.yaml'))).toBe(true);
  });

  it('.dockerignore keeps what the image copies and leaves out node_modules, .git and tests', () => {
    expect(read('deploy/Dockerfile').split('\n')[0], 'a # syntax= line makes BuildKit pull a frontend image').not.toMatch(/^#\s*syntax=/i);
    const lines = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    const excluded = new Set(lines.filter((l) => !l.startsWith('!')));
    const included = new Set(lines.filter((l) => l.startsWith('!')).map((l) => l.slice(1)));
    for (const e of ['node_modules', '.git', 'test']) expect(excluded.has(e), e).toBe(true);
    expect(lines).toContain('**/*.test.ts');
    // A path is kept when neither it nor a parent folder is listed, or it is re-included with "!".
    const kept = (path: string) => included.has(path) || !path.split('/').some((_, i, parts) => excluded.has(parts.slice(0, i + 1).join('/')));
    const needed = ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'bin', 'src', 'config', 'examples',
      'dashboard/src', 'dashboard/index.html', 'deploy/stratum.container.yaml', 'deploy/healthcheck.js'];
    for (const p of needed) expect(kept(p), p).toBe(true);
  });

  it('the image config passes `stratum check`, as do the compose and Kubernetes ones', () => {
    const dir = makeTempDir('configs');
    const k8s = parseAllDocuments(read('deploy/kubernetes/configmap.yaml'))[0]!.toJS() as Tree;
    const configs: Record<string, string> = {
      'stratum.container.yaml': read('deploy/stratum.container.yaml'),
      'stratum.compose.yaml': read('deploy/stratum.compose.yaml'),
      'configmap.yaml': k8s.data['stratum.yaml'] as string,
    };
    for (const [name, text] of Object.entries(configs)) {
      // The app lives at /app in the image; here it is the repository.
      const file = join(dir, name);
      writeFileSync(file, text.replaceAll('/app/', REPO_ROOT.endsWith('/') ? REPO_ROOT : `${REPO_ROOT}/`));
      const r = spawnSync(process.execPath, [join(REPO_ROOT, 'bin/stratum.js'), 'check', '--config', file], { encoding: 'utf8', env: { PATH: process.env.PATH } });
      expect(r.status, `${name}: ${r.stdout}${r.stderr}`).toBe(0);
    }
  });

  it('the image\'s CMD serves through the front proxy, passes its HEALTHCHECK and exits 0 on SIGTERM', async () => {
    // No Docker engine here: the runtime stage is replayed into a temporary root. Its COPY steps
    // copy from the repository (what the build stage's `COPY . .` holds) into <root>/<dest>; the
    // build stage's `npm ci` runs for real to produce node_modules. Absolute container paths are
    // moved under <root>: in CMD arguments, and in the copied YAML config, whose app.module
    // /app/... becomes <root>/app/... . STRATUM_LISTEN and STRATUM_ADMIN pick free ports.
    const all = stages();
    const build = all[0]!;
    const runtime = all.at(-1)!;
    const root = makeTempDir('image');
    const inRoot = (p: string) => join(root, p);

    // The build stage: dependencies as the Dockerfile installs them, without touching the npm cache.
    const buildDir = join(root, '.build');
    mkdirSync(buildDir);
    for (const f of ['package.json', 'package-lock.json']) cpSync(join(REPO_ROOT, f), join(buildDir, f));
    const npmCi = build.steps.filter((s) => s.op === 'RUN').flatMap((s) => s.args.split('&&').map((c) => c.trim())).find((c) => c.startsWith('npm ci'))!;
    const npm = spawnSync(`${npmCi} --prefer-offline --loglevel=error`, { cwd: buildDir, shell: true, encoding: 'utf8', timeout: 170_000 });
    expect(npm.status, `${npmCi}\n${npm.stdout}${npm.stderr}`).toBe(0);
    const madeInBuild = new Set(build.steps.filter((s) => s.op === 'RUN').flatMap((s) => [...s.args.matchAll(/mkdir -p (\S+)/g)].map((m) => m[1]!)));

    let workdir = '/';
    const env: Record<string, string> = {};
    for (const step of runtime.steps) {
      if (step.op === 'WORKDIR') workdir = resolve(workdir, step.args);
      else if (step.op === 'ENV') for (const [, k, v] of step.args.matchAll(/(\w+)=("[^"]*"|\S+)/g)) env[k!] = v!.replace(/^"|"$/g, '');
      else if (step.op === 'COPY') {
        const parts = step.args.split(/\s+/);
        const from = parts.find((p) => p.startsWith('--from='))?.slice(7);
        const paths = parts.filter((p) => !p.startsWith('--'));
        const rawDest = paths.pop()!;
        const dest = resolve(workdir, rawDest);
        const intoDir = paths.length > 1 || rawDest.endsWith('/');
        for (const src of paths) {
          let from_: string;
          if (from && from !== build.name) {
            // Another stage (the compile stage: dist/ and the dashboard page), replayed once.
            const stage = all.find((st) => st.name === from);
            expect(stage, `COPY --from=${from}: no such stage`).toBeDefined();
            from_ = join(replayStage(stage!, join(root, `.${from}`)), src.replace(/^\/app\//, ''));
            expect(existsSync(from_), `stage ${from} made no ${src}`).toBe(true);
          } else if (from) {
            const rel = src.replace(/^\/app\//, '');
            if (rel === 'node_modules') from_ = join(buildDir, rel);
            else if (existsSync(join(REPO_ROOT, rel))) from_ = join(REPO_ROOT, rel);
            else {
              expect(madeInBuild.has(rel), `${src} is neither in the repository nor made by the build stage`).toBe(true);
              from_ = join(buildDir, rel);
              mkdirSync(from_, { recursive: true });
            }
          } else {
            from_ = join(REPO_ROOT, src);
          }
          const target = inRoot(intoDir ? join(dest, src.split('/').at(-1)!) : dest);
          mkdirSync(dirname(target), { recursive: true });
          if (from_.startsWith(buildDir) && from_.endsWith('node_modules')) renameSync(from_, target);
          else if (from_.endsWith('.yaml')) writeFileSync(target, readFileSync(from_, 'utf8').replaceAll('/app/', `${inRoot('/app')}/`));
          else cpSync(from_, target, { recursive: true, filter: (p) => !p.endsWith('.test.ts') });
        }
      }
    }
    expect(statSync(inRoot('/etc/stratum/stratum.yaml')).isFile()).toBe(true);

    const cmd = execForm(runtime.steps.filter((s) => s.op === 'CMD').at(-1)!.args, 'CMD');
    expect(cmd[0]).toBe('node');
    const args = cmd.slice(1).map((a) => (a.startsWith('/') ? inRoot(a) : a));
    const childEnv: Record<string, string> = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env, STRATUM_LISTEN: '127.0.0.1:0', STRATUM_ADMIN: '127.0.0.1:0' };
    const t = spawnTracked(process.execPath, args, { cwd: inRoot(workdir), env: childEnv });
    const ready = await waitForReady(t, 30_000);
    const front = ready.front as string;
    const admin = ready.admin as string;

    for (const path of ['/livez', '/readyz']) {
      const res = await fetch(`${admin}${path}`);
      expect(res.status, path).toBe(200);
    }
    const res = await fetch(`${front}/`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ hello: 'world' });

    // The HEALTHCHECK command, as the image runs it: it finds the admin address itself, here
    // from STRATUM_ADMIN (the container's environment is the probe's too) and from the server's
    // command line, read from /proc/<pid> (PID 1 in the container).
    const hc = runtime.steps.filter((s) => s.op === 'HEALTHCHECK').at(-1)!.args;
    const probe = execForm(hc.slice(hc.indexOf('CMD') + 3).trim(), 'HEALTHCHECK CMD');
    expect(probe[0]).toBe('node');
    const probeArgs = probe.slice(1).map((a) => (a.startsWith('/') ? inRoot(a) : a));
    const probeEnv = {
      PATH: process.env.PATH ?? '', STRATUM_ADMIN: new URL(admin).host, STRATUM_HEALTHCHECK_PID: String(t.proc.pid),
    };
    const probeOpts = { cwd: inRoot(workdir), env: probeEnv, encoding: 'utf8', timeout: 10_000 } as const;
    const healthy = spawnSync(process.execPath, probeArgs, probeOpts);
    expect(healthy.status, `${healthy.stdout}${healthy.stderr}`).toBe(0);

    // node is PID 1 in the container: it must end on SIGTERM by itself, with 0.
    expect(await t.stop('SIGTERM', 40_000)).toBe(0);
    // And the same probe fails once nothing listens.
    const down = spawnSync(process.execPath, probeArgs, probeOpts);
    expect(down.status).toBe(1);
    expect(down.stderr).toMatch(/^healthcheck: GET http:\/\/127\.0\.0\.1:\d+\/readyz: /);
  }, 240_000);

  it('the HEALTHCHECK follows the admin listener: --admin, STRATUM_ADMIN, admin.listen of the config', async () => {
    const script = join(REPO_ROOT, 'deploy/healthcheck.js');
    const [inFile, inFlag, elsewhere] = [await freePort(), await freePort(), await freePort()];
    const dir = makeTempDir('healthcheck');
    const config = join(dir, 'stratum.yaml');
    writeFileSync(config, `admin:\n  listen: 127.0.0.1:${inFile}\n`);
    const probe = (pid: number, env: Record<string, string> = {}) =>
      spawnSync(process.execPath, [script], {
        env: { PATH: process.env.PATH ?? '', STRATUM_HEALTHCHECK_PID: String(pid), ...env },
        encoding: 'utf8',
        timeout: 10_000,
      });
    const common = ['--listen', '127.0.0.1:0', '--workers', '1', '--app', join(REPO_ROOT, 'examples/hello/app.ts')];

    // Moved by the config file alone: the probe reads the file named by the server's --config.
    const fromFile = await startStratum(['serve', '--config', config, ...common], { env: { STRATUM_ADMIN: '' } });
    try {
      expect(fromFile.admin).toBe(`http://127.0.0.1:${inFile}`);
      const ok = probe(fromFile.proc.pid!);
      expect(ok.status, ok.stderr).toBe(0);
      // STRATUM_ADMIN outranks the file, as it does for `stratum serve`: here it points nowhere.
      const env = probe(fromFile.proc.pid!, { STRATUM_ADMIN: `127.0.0.1:${elsewhere}` });
      expect(env.status).toBe(1);
      expect(env.stderr).toContain(`127.0.0.1:${elsewhere}/readyz`);
    } finally {
      expect(await fromFile.stop()).toBe(0);
    }

    // The --admin flag outranks both.
    const fromFlag = await startStratum(['serve', '--config', config, '--admin', `127.0.0.1:${inFlag}`, ...common]);
    try {
      const ok = probe(fromFlag.proc.pid!, { STRATUM_ADMIN: `127.0.0.1:${elsewhere}` });
      expect(ok.status, ok.stderr).toBe(0);
    } finally {
      expect(await fromFlag.stop()).toBe(0);
    }

    // A config module's default export (an object, or a function returning it), found in the
    // server's working directory when no --config is given; a relative --config resolves there too.
    const moduleDir = makeTempDir('healthcheck-module');
    const inDir = { cwd: moduleDir, env: { STRATUM_ADMIN: '' } };
    writeFileSync(join(moduleDir, 'stratum.config.mjs'),
      `export default () => ({ admin: { listen: '127.0.0.1:${inFile}' } });\n`);
    const fromModule = await startStratum(['serve', ...common], inDir);
    try {
      expect(fromModule.admin).toBe(`http://127.0.0.1:${inFile}`);
      const ok = probe(fromModule.proc.pid!);
      expect(ok.status, ok.stderr).toBe(0);
    } finally {
      expect(await fromModule.stop()).toBe(0);
    }
    writeFileSync(join(moduleDir, 'other.yaml'), `admin:\n  listen: 127.0.0.1:${inFlag}\n`);
    const relative = await startStratum(['serve', '--config', 'other.yaml', ...common], inDir);
    try {
      const ok = probe(relative.proc.pid!);
      expect(ok.status, ok.stderr).toBe(0);
    } finally {
      expect(await relative.stop()).toBe(0);
    }

    // A wildcard listen address is probed on loopback.
    writeFileSync(config, `admin:\n  listen: 0.0.0.0:${inFile}\n`);
    const wildcard = await startStratum(['serve', '--config', config, ...common], { env: { STRATUM_ADMIN: '' } });
    try {
      const ok = probe(wildcard.proc.pid!);
      expect(ok.status, ok.stderr).toBe(0);
    } finally {
      expect(await wildcard.stop()).toBe(0);
    }
  }, 120_000);
});
