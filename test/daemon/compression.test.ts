import t from 'tap';
import { parseConfig, type PoolConfig } from '../../src/core/config.js';
import { resolvePoolCompression } from '../../src/daemon/compression.js';

const pools = Object.values<PoolConfig>(
  parseConfig(
    {
      pools: {
        a: { serverTypes: ['cx23'], compression: 'zstd' },
        b: { serverTypes: ['cx23'], compression: 'zlib' },
        c: { serverTypes: ['cx23'] },
      },
    },
    '/',
  ).pools,
);

t.test('the default is zstd', async (t) => {
  t.equal(pools.find((p) => p.name === 'c')?.compression, 'zstd');
});

t.test('with libzstd loaded every pool keeps its setting', async (t) => {
  const r = resolvePoolCompression(pools, () => ({ versionString: () => '1.5.7' }));
  t.equal(r.libzstd, '1.5.7');
  t.same(r.zstdPools, ['a', 'c']);
  t.equal(r.unavailable, undefined);
  t.same(
    r.pools.map((p) => p.compression),
    ['zstd', 'zlib', 'zstd'],
  );
});

t.test('without libzstd the zstd pools run uncompressed, and the reason is kept for the log', async (t) => {
  const r = resolvePoolCompression(pools, () => {
    throw new Error('compression "zstd" needs the npm package zstd-napi, which did not load (no binding)');
  });
  t.match(r.unavailable, /zstd-napi, which did not load/);
  t.same(
    r.pools.map((p) => p.compression),
    ['none', 'zlib', 'none'],
  );
  t.same(
    pools.map((p) => p.compression),
    ['zstd', 'zlib', 'zstd'],
    'the config itself is left as it was',
  );
});

t.test('no pool with zstd: the addon is not even loaded', async (t) => {
  const plain = pools.filter((p) => p.compression === 'zlib');
  let loaded = false;
  const r = resolvePoolCompression(plain, () => {
    loaded = true;
    return { versionString: () => 'x' };
  });
  t.notOk(loaded);
  t.same(r, { pools: plain, zstdPools: [] });
});
