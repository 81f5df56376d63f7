/**
 * The prefix of every API route. A module of its own so that the node agent and the
 * CLI can name routes without loading the schemas of api.ts (and TypeBox with them).
 */
export const API_PREFIX = '/api/v1';
