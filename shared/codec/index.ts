/** Compression and encryption over buffers: sealing and opening batches, envelopes. */
export * from './batch';
export * from './compression';
export * from './envelope';
