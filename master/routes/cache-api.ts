/**
 * The source cache, in the node API: `PUT /api/v1/node/sources/SHA256` with the bytes
 * of a source archive a node downloaded, `GET` (and `HEAD`) to fetch it back.
 */
import type { Kysely } from 'kysely';
import { Type } from 'typebox';
import { Sha256 } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { App } from '../app.js';
import { readSource, storeSource, type CacheTables } from '../cache.js';

export async function sourceCacheRoutes<T>(app: App, database: Kysely<T>): Promise<void> {
  // Its own table, typed here: the cache touches nothing else of the database.
  const db = database as unknown as Kysely<CacheTables>;
  const params = Type.Object({ sha256: Sha256 });

  app.get('/sources/:sha256', { schema: { params } }, async (request, reply) => {
    const content = await readSource(db, request.params.sha256);
    return reply.type('application/octet-stream').header('cache-control', 'public, max-age=31536000, immutable').send(content);
  });

  app.put('/sources/:sha256', { schema: { params } }, async (request, reply) => {
    const body = request.body;
    if (!Buffer.isBuffer(body)) throw new PledgerError('BAD_REQUEST', 'send the archive as application/octet-stream');
    const stored = await storeSource(db, request.node.id, request.params.sha256, body);
    return reply.code(stored ? 201 : 200).send({ sha256: request.params.sha256, size: body.length, stored });
  });
}
