/**
 * The Service Bus emulator refuses clients that are not authorized, as Service Bus does, with
 * the unmodified @azure/service-bus SDK: a wrong SAS key or key name, an expired token, a
 * token whose expiry was altered, a token signed for another entity or another namespace, a
 * malformed token. Each is refused with UnauthorizedAccess and a reason, and none of them
 * sends or receives a message.
 *
 * The tokens are built here from the Service Bus SAS rules (HMAC-SHA256 over
 * `<url-encoded audience>\n<expiry>`), not with the emulator's own code.
 */
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ServiceBusClient } from '@azure/service-bus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, startTestStack, type TestStack } from '../../support/stack';

const PROBE = 'hostile-probe';
const OTHER = 'hostile-other';
const KEY_NAME = 'RootManageSharedAccessKey';
const KEY = 'SAS_KEY_VALUE';

/** A SAS token as Service Bus defines it (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-sas). */
function sasToken(audience: string, keyName: string, key: string, expiry: number): string {
  const sr = encodeURIComponent(audience);
  const sig = encodeURIComponent(createHmac('sha256', key).update(`${sr}\n${expiry}`).digest('base64'));
  return `SharedAccessSignature sr=${sr}&sig=${sig}&se=${expiry}&skn=${encodeURIComponent(keyName)}`;
}

interface Attempt {
  send: unknown;
  receive: unknown;
}

describe('hostile input: Service Bus emulator authorization', () => {
  let stack: TestStack;
  let dir: string;
  let endpoint: string;
  const now = () => Math.floor(Date.now() / 1000);

  const withKey = (name: string, key: string) => `Endpoint=${endpoint};SharedAccessKeyName=${name};SharedAccessKey=${key};UseDevelopmentEmulator=true;`;
  const withToken = (token: string) => `Endpoint=${endpoint};SharedAccessSignature=${token};UseDevelopmentEmulator=true;`;
  const client = (cs: string) => new ServiceBusClient(cs, { retryOptions: { maxRetries: 0, timeoutInMs: 10_000 } });

  /** Tries to send one message to and receive one from `queue`; returns what each threw. */
  const attempt = async (cs: string, queue = PROBE): Promise<Attempt> => {
    const c = client(cs);
    try {
      const sender = c.createSender(queue);
      const send = await sender.sendMessages({ body: 'from an unauthorized client', messageId: 'hostile' }).then(() => undefined, (e: unknown) => e);
      const receiver = c.createReceiver(queue);
      const receive = await receiver.receiveMessages(1, { maxWaitTimeInMs: 1_000 }).then(
        (got) => (got.length > 0 ? undefined : 'received nothing but was not refused'),
        (e: unknown) => e,
      );
      return { send, receive };
    } finally {
      await c.close();
    }
  };

  const expectRefused = (a: Attempt, reason: RegExp) => {
    for (const err of [a.send, a.receive]) {
      expect(err, 'the client was not refused').toBeInstanceOf(Error);
      expect((err as { code?: string }).code).toBe('UnauthorizedAccess');
      expect((err as Error).message).toMatch(reason);
      expect((err as Error).message).not.toContain(KEY);
    }
  };

  /** What the queue holds, read by an authorized client without taking anything. */
  const peek = async (queue = PROBE): Promise<string[]> => {
    const c = client(stack.serviceBusConnectionString);
    try {
      return (await c.createReceiver(queue).peekMessages(100)).map((m) => String(m.messageId));
    } finally {
      await c.close();
    }
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-hostile-sb-'));
    // Ferry's own queues (the host consumes them) plus two that nothing consumes
    const config = JSON.parse(readFileSync(join(ROOT, 'local/servicebus/Config.json'), 'utf8'));
    const queues = config.UserConfig.Namespaces[0].Queues as { Name: string; Properties: Record<string, unknown> }[];
    for (const name of [PROBE, OTHER]) queues.push({ Name: name, Properties: { LockDuration: 'PT1M', MaxDeliveryCount: 10, RequiresSession: false } });
    writeFileSync(join(dir, 'Config.json'), JSON.stringify(config));
    stack = await startTestStack({ servicebusConfig: join(dir, 'Config.json') });
    endpoint = /Endpoint=([^;]+)/.exec(stack.serviceBusConnectionString)![1]!;
    // one message that only an authorized receiver may take
    const c = client(stack.serviceBusConnectionString);
    await c.createSender(PROBE).sendMessages({ body: 'control', messageId: 'control' });
    await c.close();
  });

  afterAll(async () => {
    await stack?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a wrong SAS key is refused: the signature does not match', async () => {
    expectRefused(await attempt(withKey(KEY_NAME, 'NOT_THE_KEY')), /signature does not match/);
  });

  it('an unknown key name is refused, even with the right key', async () => {
    expectRefused(await attempt(withKey('SomeOtherPolicy', KEY)), /key name 'SomeOtherPolicy' is not authorized/);
  });

  it('an expired token is refused, and so is one whose expiry was moved forward', async () => {
    const audience = `${endpoint.replace(/\/?$/, '/')}${PROBE}`;
    expectRefused(await attempt(withToken(sasToken(audience, KEY_NAME, KEY, now() - 60))), /expired/);
    const expired = sasToken(audience, KEY_NAME, KEY, now() - 60);
    const extended = expired.replace(/se=\d+/, `se=${now() + 3600}`);
    expectRefused(await attempt(withToken(extended)), /signature does not match/);
  });

  it('a token signed for another entity grants nothing on this one', async () => {
    const forOther = sasToken(`${endpoint.replace(/\/?$/, '/')}${OTHER}`, KEY_NAME, KEY, now() + 3600);
    expectRefused(await attempt(withToken(forOther), PROBE), new RegExp(`scoped to '${OTHER}' and does not grant '${PROBE}'`));
    // control: the same token works on the entity it was signed for
    const own = await attempt(withToken(forOther), OTHER);
    expect(own.send).toBeUndefined();
    expect(own.receive).toBeUndefined();
  });

  it('a token signed for another namespace is refused, whatever entity it names', async () => {
    for (const audience of ['sb://contoso.servicebus.windows.net/', `sb://contoso.servicebus.windows.net/${PROBE}`]) {
      expectRefused(await attempt(withToken(sasToken(audience, KEY_NAME, KEY, now() + 3600))), /for namespace 'contoso\.servicebus\.windows\.net', not this one/);
    }
  });

  it('a malformed token is refused', async () => {
    expectRefused(await attempt(withToken('SharedAccessSignature sr=x&sig=y')), /not a well-formed SharedAccessSignature/);
  });

  it('none of the refused clients sent or took a message; a namespace token with the right key works', async () => {
    expect(await peek(PROBE)).toEqual(['control']);
    const root = sasToken(endpoint.replace(/\/?$/, '/'), KEY_NAME, KEY, now() + 3600);
    const c = client(withToken(root));
    try {
      const got = await c.createReceiver(PROBE, { receiveMode: 'receiveAndDelete' }).receiveMessages(1, { maxWaitTimeInMs: 5_000 });
      expect(got.map((m) => m.body)).toEqual(['control']);
    } finally {
      await c.close();
    }
    expect(stack.logs.filter((l) => /CBS put-token refused/.test(l)).length).toBeGreaterThanOrEqual(7);
  });
});
