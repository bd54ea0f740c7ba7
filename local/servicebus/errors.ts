/**
 * Errors the broker returns, with the AMQP conditions and `$management` status codes real
 * Service Bus uses, so that the SDK maps each to the same `ServiceBusError.code`
 * (core-amqp's ConditionErrorNameMapper, then service-bus's well-known code table):
 *
 * | factory | condition | status | SDK code |
 * | --- | --- | --- | --- |
 * | entityNotFound | amqp:not-found (+ "The messaging entity ... could not be found") | 404 | MessagingEntityNotFound |
 * | unauthorized | amqp:unauthorized-access | 401 | UnauthorizedAccess |
 * | lockLost | com.microsoft:message-lock-lost | 410 | MessageLockLost |
 * | sessionLockLost | com.microsoft:session-lock-lost | 410 | SessionLockLost |
 * | sessionCannotBeLocked | com.microsoft:session-cannot-be-locked | 410 | SessionCannotBeLocked |
 * | messageNotFound | com.microsoft:message-not-found | 404 | MessageNotFound |
 * | messageTooLarge | amqp:link:message-size-exceeded | 403 | MessageSizeExceeded |
 * | notAllowed | amqp:not-allowed | 400 | GeneralError (InvalidOperationError) |
 * | badRequest | com.microsoft:argument-error | 400 | GeneralError (ArgumentError) |
 * | timeout | com.microsoft:timeout | 408 | ServiceTimeout |
 */
export class BrokerError extends Error {
  override readonly name = 'BrokerError';
  constructor(
    readonly condition: string,
    description: string,
    readonly statusCode: number,
  ) {
    super(description);
  }

  toAmqp(): { condition: string; description: string } {
    return { condition: this.condition, description: this.message };
  }

  static entityNotFound(address: string): BrokerError {
    return new BrokerError('amqp:not-found', `The messaging entity '${address}' could not be found. Check the entity name against the emulator's Config.json.`, 404);
  }
  static unauthorized(reason: string): BrokerError {
    return new BrokerError('amqp:unauthorized-access', `Unauthorized access. ${reason}`, 401);
  }
  static lockLost(): BrokerError {
    return new BrokerError('com.microsoft:message-lock-lost',
      'The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.', 410);
  }
  static sessionLockLost(sessionId: string): BrokerError {
    return new BrokerError('com.microsoft:session-lock-lost',
      `The session lock has expired on the MessageSession '${sessionId}'. Accept a new MessageSession.`, 410);
  }
  static sessionCannotBeLocked(sessionId: string): BrokerError {
    return new BrokerError('com.microsoft:session-cannot-be-locked',
      `The requested session '${sessionId}' cannot be accepted. It may be locked by another receiver.`, 410);
  }
  static messageNotFound(detail: string): BrokerError {
    return new BrokerError('com.microsoft:message-not-found', detail, 404);
  }
  static messageTooLarge(size: number, max: number): BrokerError {
    return new BrokerError('amqp:link:message-size-exceeded',
      `The received message (size ${size} bytes) exceeds the limit (${max} bytes) currently allowed on the link.`, 403);
  }
  static notAllowed(description: string): BrokerError {
    return new BrokerError('amqp:not-allowed', description, 400);
  }
  static badRequest(description: string): BrokerError {
    return new BrokerError('com.microsoft:argument-error', description, 400);
  }
  static timeout(description: string): BrokerError {
    return new BrokerError('com.microsoft:timeout', description, 408);
  }
}

export function isBrokerError(e: unknown): e is BrokerError {
  return e instanceof Error && e.name === 'BrokerError';
}

/** The AMQP error for any thrown value: a BrokerError's own, else amqp:internal-error. */
export function errorCondition(e: unknown): { condition: string; description: string } {
  if (isBrokerError(e)) return e.toAmqp();
  return { condition: 'amqp:internal-error', description: (e as Error).message ?? String(e) };
}
