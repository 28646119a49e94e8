import { describe, expect, it } from 'vitest';
import { parseTiming } from './upstream-uwsgi.ts';

describe('parseTiming', () => {
  it('reads the worker and app milliseconds our worker reports', () => {
    expect(parseTiming('worker=0.310,app=50.200')).toEqual({ worker: 0.31, app: 50.2 });
    expect(parseTiming('app=2, worker=1')).toEqual({ worker: 1, app: 2 });
  });

  it('ignores unknown keys and garbage instead of failing the request', () => {
    expect(parseTiming('worker=abc,cpu=3,app')).toEqual({ worker: 0, app: 0 });
    expect(parseTiming('')).toEqual({ worker: 0, app: 0 });
    expect(parseTiming(',,=1,app=7')).toEqual({ worker: 0, app: 7 });
  });
});
