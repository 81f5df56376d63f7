/**
 * The schema of the node configuration file. It is compiled into
 * slave/validators.generated.ts at build time (scripts/generate-validators.mjs): the
 * agent itself never loads TypeBox.
 */
import { Type } from 'typebox';
import { PUBLIC_KEY_PATTERN } from '../protocol/binary-cache.js';

export const NodeConfigFile = Type.Object(
  {
    masterUrl: Type.String({ pattern: '^https?://[^\\s]+$' }),
    credential: Type.String({ minLength: 1 }),
    root: Type.String({ minLength: 2, pattern: '^/' }),
    partitions: Type.Optional(Type.Integer({ minimum: 1, maximum: 4096 })),
    ipBase: Type.Optional(Type.String({ pattern: '^127\\.\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}$' })),
    portBase: Type.Optional(Type.Integer({ minimum: 1024, maximum: 65535 })),
    portsPerPartition: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    supervisor: Type.Optional(
      Type.Object(
        {
          backoffFirstMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 3_600_000 })),
          backoffMaxMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000 })),
          resetAfterMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000 })),
          crashLoopExits: Type.Optional(Type.Integer({ minimum: 2, maximum: 1000 })),
          crashLoopWindowMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000 })),
          logMaxBytes: Type.Optional(Type.Integer({ minimum: 1024 })),
          logKeep: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
          logCheckMs: Type.Optional(Type.Integer({ minimum: 100, maximum: 3_600_000 })),
          idleExitMs: Type.Optional(Type.Integer({ minimum: 1000, maximum: 86_400_000 })),
        },
        { additionalProperties: false },
      ),
    ),
    schedule: Type.Optional(
      Type.Object(
        {
          software: Type.Optional(Type.String({ minLength: 1 })),
          instance: Type.Optional(Type.String({ minLength: 1 })),
          promise: Type.Optional(Type.String({ minLength: 1 })),
          usage: Type.Optional(Type.String({ minLength: 1 })),
          report: Type.Optional(Type.String({ minLength: 1 })),
          maxRandomDelayMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 3_600_000 })),
          cycleTimeoutMs: Type.Optional(Type.Integer({ minimum: 1000, maximum: 7 * 86_400_000 })),
          stopGraceMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 3_600_000 })),
        },
        { additionalProperties: false },
      ),
    ),
    outbox: Type.Optional(
      Type.Object(
        {
          retryFirstMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 3_600_000 })),
          retryMaxMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000 })),
          refusedRetryMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 86_400_000 })),
          setAsideAfter: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
        },
        { additionalProperties: false },
      ),
    ),
    promiseSummarySeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400 })),
    binaryCache: Type.Optional(
      Type.Object(
        { download: Type.Boolean(), upload: Type.Boolean(), publicKey: Type.String({ pattern: PUBLIC_KEY_PATTERN }) },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);
