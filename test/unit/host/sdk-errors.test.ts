import { describe, expect, it } from 'vitest';
import { isAmqpStackError } from '../../../local/sdk-errors';

describe('isAmqpStackError', () => {
  it('recognises errors thrown from the Service Bus SDK stack, and nothing else', () => {
    const fromSdk = new Error('Unable to close the amqp session local-2 due to operation timeout.');
    fromSdk.stack = `OperationTimeoutError: ${fromSdk.message}\n    at Timeout.actionAfterTimeout (/app/node_modules/rhea-promise/dist/lib/session.js:175:32)`;
    const typeError = new TypeError("Cannot read properties of undefined (reading 'address')");
    typeError.stack = `TypeError: x\n    at get address (/app/node_modules/rhea-promise/dist/lib/link.js:63:28)\n    at Timeout._onTimeout (C:\\app\\node_modules\\@azure\\core-amqp\\dist\\commonjs\\requestResponseLink.js:117:38)`;
    expect(isAmqpStackError(fromSdk)).toBe(true);
    expect(isAmqpStackError(typeError)).toBe(true);
    const ours = new Error('boom');
    ours.stack = 'Error: boom\n    at applyBatches (/app/dist/shared/services/apply.js:10:5)';
    expect(isAmqpStackError(ours)).toBe(false);
    expect(isAmqpStackError('a string')).toBe(false);
    expect(isAmqpStackError(undefined)).toBe(false);
  });
});
