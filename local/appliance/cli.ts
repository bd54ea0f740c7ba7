#!/usr/bin/env node
/** `ferry`: the replication appliance CLI (commands in program.ts). */
import { main } from './program';

main(process.argv.slice(2)).then((code) => process.exit(code));
