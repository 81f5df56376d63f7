/**
 * The prefix of every API route. A module of its own so that the route names of
 * endpoints.ts, which the node agent loads, do not bring the schemas of api.ts (and
 * TypeBox with them).
 */
export const API_PREFIX = '/api/v1';
