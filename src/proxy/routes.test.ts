import { describe, expect, it } from 'vitest';
import type { Route } from '../config/schema.ts';
import { normalisePath, pathOf, RouteTable } from './routes.ts';

function table(...paths: string[]): RouteTable<string> {
  return new RouteTable(paths.map((path, index) => ({
    route: { host: null, path } as Route, index, upstream: path, label: path,
  })));
}

describe('normalisePath (nginx location matching)', () => {
  it.each([
    ['/', '/'],
    ['/a/b', '/a/b'],
    ['/rec/../x', '/x'],
    ['/x/../rec/secret', '/rec/secret'],
    ['/%72ec/x', '/rec/x'],
    ['/%7E%2d%2E%5f', '/~-._'],
    ['//rec/x', '/rec/x'],
    ['/rec//x///', '/rec/x/'],
    ['/./rec/./x', '/rec/x'],
    ['/rec/..', '/'],
    ['/a/b/.', '/a/b/'],
    ['/../../rec', '/rec'],
    ['/%2e%2e/rec', '/rec'],
    ['/rec/%2E%2e/x', '/x'],
    ['/rec%2Fx', '/rec%2Fx'], // reserved: stays encoded, no segment boundary
    ['/rec%2fx', '/rec%2Fx'],
    ['/a%20b', '/a%20b'],
    ['/%zz/x', '/%zz/x'],
    ['/rec..x/.hidden', '/rec..x/.hidden'],
  ])('%s → %s', (raw, want) => {
    expect(normalisePath(raw)).toBe(want);
  });
});

describe('pathOf', () => {
  it.each([
    ['/a?b=/../c', '/a'],
    ['/a#f', '/a'],
    ['http://example.com/rec/x?q', '/rec/x'],
    ['http://example.com', '/'],
    ['*', '/'],
  ])('%s → %s', (target, want) => {
    expect(pathOf(target)).toBe(want);
  });
});

describe('RouteTable.match on the normalised path', () => {
  const t = table('/', '/rec', '/api/');
  const routeOf = (url: string) => t.match('example.com', url)?.label;

  it('a prefix route cannot be escaped with dot segments', () => {
    expect(routeOf('/rec/../x')).toBe('/');
    expect(routeOf('/rec/%2e%2e/x')).toBe('/');
    expect(routeOf('/rec/..')).toBe('/');
  });

  it('a prefix route cannot be bypassed by encoding, dot segments or doubled slashes', () => {
    expect(routeOf('/x/../rec/secret')).toBe('/rec');
    expect(routeOf('/%72ec/x')).toBe('/rec');
    expect(routeOf('//rec/x')).toBe('/rec');
    expect(routeOf('/./rec')).toBe('/rec');
    expect(routeOf('/%2E/rec/x')).toBe('/rec');
    expect(routeOf('http://example.com//rec/x')).toBe('/rec');
    expect(routeOf('/api//v1')).toBe('/api/');
  });

  it('segment boundaries and queries as before', () => {
    expect(routeOf('/rec')).toBe('/rec');
    expect(routeOf('/rec?x=1')).toBe('/rec');
    expect(routeOf('/rec/x?y=/../../z')).toBe('/rec');
    expect(routeOf('/recx')).toBe('/');
    expect(routeOf('/rec%2Fx')).toBe('/');
    expect(routeOf('/api')).toBe('/');
  });
});
