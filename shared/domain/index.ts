/** Pure domain code shared by the appliance and the functions: no I/O, no clock, no randomness. */
export * from './domain-error';
export * from './envelope';
export * from './extents';
export * from './health';
export * from './ids';
export * from './policy';
export * from './sequencing';
export * from './state-machine';
export * from './wire-format';
export * from './wire-format-error';
