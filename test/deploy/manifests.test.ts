// The Kubernetes manifests and the compose file, validated with what CI can run: `kubectl
// kustomize` renders deploy/kubernetes as `kubectl apply -k` would, every rendered object is
// checked against the official schemas (the kubernetes-models packages, generated from the
// Kubernetes OpenAPI and the Prometheus Operator CRDs) and for fields the schema does not know,
// and Debian's docker-compose (1.29) parses deploy/compose.yaml. kubectl and docker-compose are
// real peers: missing in CI is a failure (deploy/test-image.sh installs both there), elsewhere a skip.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, type TestContext } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigMap, Secret, Service } from 'kubernetes-models/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { REPO_ROOT } from '../helpers/stratum.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- parsed YAML of any shape
type Tree = Record<string, any>;
const read = (path: string) => readFileSync(join(REPO_ROOT, path), 'utf8');
const VERSION = (JSON.parse(read('package.json')) as { version: string }).version;

/** Runs a peer tool, or skips the test (fails it in CI). */
function tool(ctx: TestContext, cmd: string, args: string[], env: Record<string,
  string> = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env,
    ...env } });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    const pkg = cmd === 'kubectl' ? 'kubernetes-client' : cmd;
    const reason = `${cmd} not found; install Debian's ${pkg} (deploy/test-image.sh does in CI)`;
    if (process.env.CI) throw new Error(reason);
    console.warn(`skipped: ${reason}`);
    ctx.skip(reason);
  }
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// --- schemas ------------------------------------------------------------------------------------

interface ModelClass {
  apiVersion: string;
  kind: string;
  new (data: Tree): { validate(): void };
  prototype: { validate(): void };
}
const MODELS: ModelClass[] = [ConfigMap, Secret, Service, Deployment, HorizontalPodAutoscaler, PodDisruptionBudget,
  ServiceMonitor] as never;
const modelFor = (o: Tree) => MODELS.find((m) => m.apiVersion === o.apiVersion && m.kind === o.kind);

/**
 * Fields of `obj` its schema does not define. The generated validators check every property a
 * schema defines, and iterate the keys of maps (labels, data, resources) — but ignore any other
 * key, so an unknown field (a typo, a field of another API version) passes them. Reading is the
 * tell: the validator runs on a proxy that records every key it reads, and a key of the object
 * that it never read is one the schema does not know.
 */
function unknownFields(model: ModelClass, obj: Tree): string[] {
  const seen = new Set<string>();
  const track = (value: unknown, path: string): unknown => {
    if (value === null || typeof value !== 'object') return value;
    return new Proxy(value as object, {
      get(target, key, receiver) {
        const v = Reflect.get(target, key, receiver);
        if (typeof key !== 'string' || !Object.hasOwn(target, key)) return v;
        seen.add(`${path}/${key}`);
        return track(v, `${path}/${key}`);
      },
    });
  };
  model.prototype.validate.call(track(obj, ''));
  const unknown: string[] = [];
  const walk = (value: unknown, path: string) => {
    if (value === null || typeof value !== 'object') return;
    for (const [k, v] of Object.entries(value)) {
      const p = `${path}/${k}`;
      if (!seen.has(p)) unknown.push(p);
      else walk(v, p);
    }
  };
  walk(obj, '');
  return unknown;
}

/** Schema errors (empty when valid) and unknown fields of one object. */
function check(o: Tree): { errors: string; unknown: string[] } {
  const model = modelFor(o);
  if (!model) return { errors: `no schema for ${o.apiVersion} ${o.kind}`, unknown: [] };
  try {
    new model(o).validate();
  } catch (err) {
    return { errors: (err as Error).message, unknown: [] };
  }
  return { errors: '', unknown: unknownFields(model, o) };
}

function render(ctx: TestContext): Tree[] {
  const r = tool(ctx, 'kubectl', ['kustomize', 'deploy/kubernetes']);
  expect(r.status, r.stderr).toBe(0);
  return parseAllDocuments(r.stdout).map((d) => d.toJS() as Tree);
}

describe('Kubernetes manifests against the official schemas', () => {
  it('kubectl kustomize renders the kustomization: the resources it lists, image set by images:', (ctx) => {
    const objects = render(ctx);
    expect(objects.map((o) => o.kind).sort()).toEqual(['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler',
      'PodDisruptionBudget', 'Service', 'ServiceMonitor']);
    const deployment = objects.find((o) => o.kind === 'Deployment')!;
    expect(deployment.spec.template.spec.containers[0].image).toBe(`stratum:${VERSION}`);
  });

  it('every rendered object, and the example Secret, passes its schema with no unknown field', (ctx) => {
    const objects = [...render(ctx),
      ...parseAllDocuments(read('deploy/kubernetes/secret.example.yaml')).map((d) => d.toJS() as Tree)];
    const problems = objects.map((o) => ({ what: `${o.kind}/${o.metadata?.name}`,
      ...check(o) })).filter((p) => p.errors || p.unknown.length);
    expect(problems).toEqual([]);
  });

  it('the checks refuse a wrong type, a misspelled field and a field in the wrong place', (ctx) => {
    const deployment = render(ctx).find((o) => o.kind === 'Deployment')!;
    const copy = () => structuredClone(deployment);
    const badType = copy();
    badType.spec.template.spec.containers[0].ports[0].containerPort = 'eighty';
    expect(check(badType).errors).toMatch(/containerPort/);
    const typo = copy();
    typo.spec.template.spec.containers[0].imagePullPolice = 'Always';
    typo.spec.replica = 3;
    expect(check(typo).errors).toBe('');
    expect(check(typo).unknown.sort()).toEqual(['/spec/replica', '/spec/template/spec/containers/0/imagePullPolice']);
    const misplaced = copy();
    misplaced.spec.template.spec.readOnlyRootFilesystem = true; // belongs to a container's securityContext
    expect(check(misplaced).unknown).toEqual(['/spec/template/spec/readOnlyRootFilesystem']);
    // Maps (labels, ConfigMap data, resources) take any key.
    const labels = copy();
    labels.metadata.labels['example.com/anything'] = 'x';
    expect(check(labels)).toEqual({ errors: '', unknown: [] });
  });

  it('the Deployment leaves the replica count to the HPA', (ctx) => {
    const objects = render(ctx);
    const deployment = objects.find((o) => o.kind === 'Deployment')!;
    const hpa = objects.find((o) => o.kind === 'HorizontalPodAutoscaler')!;
    // With spec.replicas set, every `kubectl apply -k` resets the count the HPA chose.
    expect(deployment.spec.replicas).toBeUndefined();
    expect(hpa.spec.scaleTargetRef.name).toBe(deployment.metadata.name);
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2);
    const pdb = objects.find((o) => o.kind === 'PodDisruptionBudget')!;
    expect(pdb.spec.minAvailable).toBeLessThan(hpa.spec.minReplicas);
  });
});

describe('compose.yaml', () => {
  it('docker-compose 1.29 (Debian 12) accepts it', (ctx) => {
    const r = tool(ctx, 'docker-compose', ['-f', 'deploy/compose.yaml', 'config', '-q'],
      { STRATUM_ADMIN_TOKEN: 'check' });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    expect(r.stderr).toBe('');
    // And refuses it without the admin token, as the file says it should.
    const noToken = tool(ctx, 'docker-compose', ['-f', 'deploy/compose.yaml', 'config', '-q'],
      { STRATUM_ADMIN_TOKEN: '' });
    expect(noToken.status).not.toBe(0);
    expect(noToken.stderr).toMatch(/STRATUM_ADMIN_TOKEN/);
  });
});

describe('the image tag', () => {
  it(`is stratum:${VERSION} (package.json's version) in compose, Kubernetes and the READMEs`, () => {
    const tag = `stratum:${VERSION}`;
    const compose = parse(read('deploy/compose.yaml')) as Tree;
    expect(compose.name, 'a top-level name: needs Compose v2').toBeUndefined();
    expect(compose.services.stratum.image).toBe(tag);
    const deployment = parseAllDocuments(read('deploy/kubernetes/deployment.yaml'))[0]!.toJS() as Tree;
    expect(deployment.spec.template.spec.containers[0].image).toBe(tag);
    const kustomization = parse(read('deploy/kubernetes/kustomization.yaml')) as Tree;
    expect(kustomization.images).toEqual([expect.objectContaining({ name: 'stratum', newTag: VERSION })]);
    // Every command line of the READMEs and the Dockerfile that builds or runs the image names the same tag.
    for (const file of ['README.md', 'deploy/README.md', 'deploy/Dockerfile']) {
      const lines = read(file).split('\n').filter((l) => /^[#\s]*docker (build|run)\s/.test(l));
      if (file !== 'README.md') expect(lines.length, file).toBeGreaterThan(0);
      for (const l of lines) expect(l, file).toMatch(new RegExp(`(^|\\s)${tag.replaceAll('.', '\\.')}(\\s|$)`));
    }
  });
});
