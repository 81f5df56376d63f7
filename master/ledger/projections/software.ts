/** The catalog of published software releases: immutable once published. */
import { NO_LOCKS, type Projection } from '../applier.js';

export const software: Projection<'software.published'> = {
  tables: ['software'],
  appliers: {
    // A release is inserted once under its name and version, which the database keeps unique.
    'software.published': {
      locks: NO_LOCKS,
      apply: async (db, d, at) => {
        await db
          .insertInto('software')
          .values({
            id: d.softwareId,
            name: d.name,
            version: d.version,
            hash: d.hash,
            description: d.description,
            definition: JSON.stringify(d.definition),
            parameter_schemas: JSON.stringify(d.parameterSchemas),
            published_at: at,
          })
          .execute();
      },
    },
  },
};
