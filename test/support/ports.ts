export { freePort, freePorts } from '../../local/stack/ephemeral';
