/**
 * The caches, in the node API.
 *
 * Sources: `PUT /api/v1/node/sources/SHA256` with the bytes of a source archive a node
 * downloaded, taken only when a release supplied to that node names it (403 for any
 * other), `GET` (and `HEAD`) to fetch it back.
 *
 * Built parts: `GET /api/v1/node/binaries/PART?platform=&prefix=` describes the entry a
 * node may use (signed), `GET .../PART/archive?platform=&prefix=` serves its archive,
 * `PUT /api/v1/node/binaries/PART?platform=&prefix=&sha256=` files one, from a node an
 * operator allowed to (403 for any other). And in the user API,
 * `GET /api/v1/binary-cache/key`: the public key nodes verify entries with.
 */
import type { Kysely } from 'kysely';
import { PledgerError } from '../../protocol/errors.js';
import { ROUTES } from '../../protocol/routes.js';
import type { App } from '../app.js';
import { binaryCacheSigningKey, findBinary, readBinary, readSource, storeBinary, storeSource } from '../cache.js';
import type { Tables } from '../db/tables.js';
import { sourceSuppliedTo } from '../software.js';
import { route } from './route.js';

const SHA256 = /^[0-9a-f]{64}$/;
const { node, binaryCache } = ROUTES;

export async function sourceCacheRoutes(app: App, db: Kysely<Tables>): Promise<void> {
  // fastify answers HEAD on this route too (`node.hasSource`): the same answer without its body.
  route(app, node.source, async (request, reply) => {
    const content = await readSource(db, request.params.sha256);
    return reply.type('application/octet-stream').header('cache-control', 'public, max-age=31536000, immutable').send(content);
  });

  route(
    app,
    node.fileSource,
    async (request, reply) => {
      const body = request.body;
      if (!Buffer.isBuffer(body)) throw new PledgerError('BAD_REQUEST', 'send the archive as application/octet-stream');
      const stored = await storeSource(db, request.node.id, request.params.sha256, body);
      return reply.code(stored ? 201 : 200).send({ sha256: request.params.sha256, size: body.length, stored });
    },
    {
      // Checked before the body is read: the cache holds what the releases a node builds
      // ask for, not whatever a node (perhaps a compromised one) wants to keep there.
      onRequest: async (request) => {
        const { sha256 } = request.params;
        if (!SHA256.test(sha256)) throw new PledgerError('BAD_REQUEST', `invalid request: ${sha256} is not a sha256 (64 lowercase hex digits)`);
        if (!(await sourceSuppliedTo(db, request.node.id, sha256))) {
          throw new PledgerError('FORBIDDEN', `no software release supplied to node ${request.node.name} names a source with sha256 ${sha256}: nothing was filed`);
        }
      },
    },
  );
}

export async function binaryCacheRoutes(app: App, db: Kysely<Tables>): Promise<void> {

  route(app, node.binary, async (request) => findBinary(db, request.params.partHash, request.query.platform, request.query.prefix));

  route(app, node.binaryArchive, async (request, reply) => {
    const content = await readBinary(db, request.params.partHash, request.query.platform, request.query.prefix);
    return reply.type('application/gzip').send(content);
  });

  route(
    app,
    node.fileBinary,
    async (request, reply) => {
      const body = request.body;
      if (!Buffer.isBuffer(body)) throw new PledgerError('BAD_REQUEST', 'send the archive as application/gzip');
      const uploaded = await storeBinary(db, request.node.id, request.params.partHash, request.query, body);
      return reply.code(uploaded.stored ? 201 : 200).send(uploaded);
    },
    {
      // The node-side switch is the node's own and a compromised node can flip it: what
      // every node then trusts is filed only from nodes an operator chose. Checked
      // before the body is read.
      onRequest: async (request) => {
        if (request.node.binary_cache_upload !== 1) {
          throw new PledgerError('FORBIDDEN', `node ${request.node.name} may not file parts in the binary cache: nothing was filed`, {
            hint: `an operator allows it with \`pledger node set ${request.node.name} --binary-cache-upload on\``,
          });
        }
      },
    },
  );
}

/** For operators and users: what `pledger node configure --binary-cache-key` takes. */
export async function binaryCacheKeyRoutes(app: App, db: Kysely<Tables>): Promise<void> {
  route(app, binaryCache.key, async () => ({ publicKey: (await binaryCacheSigningKey(db)).publicKey }));
}
