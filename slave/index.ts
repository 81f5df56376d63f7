/**
 * The node agent ("slave"): what `pledger node ...` calls. Each function converges one
 * aspect of the node towards the master's desired state and returns what it did; none
 * prints (except through the logger) or exits.
 */
export { defaultNodeConfigPath, NODE_CONFIG_DEFAULTS, readNodeConfig, resolveNodeConfig, writeNodeConfig, type NodeConfig } from './config.js';
export { computePartitions, formatNode } from './format.js';
export { processInstances } from './instance.js';
export { createLogger, silentLogger, type Logger } from './log.js';
export { checkPromise, checkPromises, type PromiseResult } from './promises.js';
export type { ItemResult, RunReport } from './result.js';
export { installSoftware } from './software.js';
export { supervisorSettings } from './config.js';
export { renderCrontab } from './cron.js';
export { runDaemon } from './daemon.js';
export { reportEvents } from './report.js';
export { checkPromisesCycle } from './promise-cycle.js';
export { connectSupervisor, SupervisorClient } from './supervisor-client.js';
export { runSupervisor } from './supervisor-run.js';
export { meterUsage } from './usage.js';
