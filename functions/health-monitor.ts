/**
 * Timer (every minute): keeps every VM's health and RPO current even when no batch arrives, so
 * a stalled appliance shows up as such; logs each change of health.
 */
import { app, type InvocationContext, type Timer } from '@azure/functions';
import { replicationDeps } from '../shared/azure/composition';
import { monitorHealth } from '../shared/services/maintenance';

export async function healthMonitor(_timer: Timer, context: InvocationContext): Promise<void> {
  for (const c of await monitorHealth(replicationDeps())) {
    const line = `VM '${c.vmId}' health ${c.from ?? 'unknown'} -> ${c.to} (RPO ${c.rpoSeconds ?? 'n/a'} s)${c.reasons.length ? `: ${c.reasons.join(' ')}` : ''}`;
    if (c.to === 'healthy') context.log(line);
    else context.warn(line);
  }
}

app.timer('health-monitor', { schedule: '0 */1 * * * *', runOnStartup: false, handler: healthMonitor });
