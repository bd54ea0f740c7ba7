#!/usr/bin/env node
/** `ferry`: the replication appliance CLI (commands in program.ts). */
import { createLogger } from '../log';
import { surviveAmqpStackErrors } from '../sdk-errors';
import { main } from './program';

surviveAmqpStackErrors(createLogger('ferry', { stream: process.stderr }), 'ferry');

main(process.argv.slice(2)).then((code) => process.exit(code));
