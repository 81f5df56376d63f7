/**
 * Whether a partition's address and ports can be bound, asked before its services are
 * started: a port another program holds (another node on this machine, a service
 * listening on every address) would otherwise make the service die in its own log,
 * while the promise reaches that other program and reports it as ours.
 */
import net from 'node:net';

const REASONS: Record<string, string> = {
  EADDRINUSE: 'address already in use',
  EADDRNOTAVAIL: 'address not available',
  EACCES: 'permission denied',
};

/** Resolves to null when `ip:port` can be bound, else to why not. */
function tryBind(ip: string, port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', (error: NodeJS.ErrnoException) => resolve(REASONS[error.code ?? ''] ?? error.message));
    server.listen({ host: ip, port, exclusive: true }, () => server.close(() => resolve(null)));
  });
}

/** The first port of `ports` that cannot be bound on `ip`, as `cannot bind IP:PORT: REASON`; null when all can. */
export async function firstUnbindable(ip: string, ports: number[]): Promise<string | null> {
  for (const port of ports) {
    const reason = await tryBind(ip, port);
    if (reason !== null) return `cannot bind ${ip}:${port}: ${reason}`;
  }
  return null;
}
