/**
 * Preloaded into Azurite (`node -r`) when the stack runs it with `durableAzurite`: every
 * acknowledged write is on disk before Azurite answers, as with Azure Storage.
 *
 * Azurite keeps its metadata (tables, blob block lists and page ranges, the index of its extent
 * files) in LokiJS databases that it saves every 5 s (`autosaveInterval: 5000`, not
 * configurable). A kill -9 therefore rolls back the last seconds of writes it had acknowledged:
 * applied-sequence rows, committed blocks. Real Azure Storage never does that, so a fault test
 * that kills Azurite would test the emulator, not Ferry.
 *
 * Here, a change to any collection queues one microtask that writes each changed database
 * synchronously (serialize, write a temporary file, rename over the database file). LokiJS
 * operations are synchronous and Azurite answers only after the awaited store call returns, so
 * that microtask (queued first) runs before the response is written. The data of blobs is in
 * Azurite's extent files, written before their metadata. Cost: a full serialization per
 * changed database per tick (small in tests).
 */
import { renameSync, writeFileSync } from 'node:fs';

interface LokiDb {
  filename: string;
  persistenceMethod?: string;
  autosaveDirty(): boolean;
  autosaveClearFlags(): void;
  serialize(): string;
}

/* eslint-disable @typescript-eslint/no-require-imports */
const Loki = require('lokijs') as { prototype: Record<string, unknown>; Collection: { prototype: Record<string, unknown> } };

const dbs = new Set<LokiDb>();
let queued = false;

function saveChanged(): void {
  queued = false;
  for (const db of dbs) {
    if (db.persistenceMethod !== 'fs' || !db.autosaveDirty()) continue;
    const tmp = `${db.filename}~durable`;
    writeFileSync(tmp, db.serialize());
    renameSync(tmp, db.filename);
    db.autosaveClearFlags();
  }
}

function changed(): void {
  if (queued) return;
  queued = true;
  queueMicrotask(saveChanged);
}

function wrap(proto: Record<string, unknown>, name: string, after: (self: unknown) => void): void {
  const orig = proto[name];
  if (typeof orig !== 'function') return;
  proto[name] = function (this: unknown, ...args: unknown[]) {
    const out = (orig as (...a: unknown[]) => unknown).apply(this, args);
    after(this);
    return out;
  };
}

wrap(Loki.prototype, 'configureOptions', (self) => dbs.add(self as LokiDb));
for (const name of ['addCollection', 'removeCollection']) wrap(Loki.prototype, name, changed);
for (const name of ['insert', 'insertOne', 'update', 'remove', 'findAndUpdate', 'findAndRemove', 'updateWhere', 'removeWhere', 'clear', 'removeDataOnly', 'add']) {
  wrap(Loki.Collection.prototype, name, changed);
}
