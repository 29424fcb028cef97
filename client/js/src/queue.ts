// SPDX-License-Identifier: Apache-2.0
//
// A bounded queue read as an async iterator: what a subscription or a request hands to its
// consumer. Items pushed while nobody waits are kept, at most `limit` of them: past the limit
// the queue ends with an error (a consumer that does not keep up would otherwise hold every
// event in memory), as the broker disconnects a subscriber that does not read.
import { NexusError } from "./errors.js";

export class EventQueue<T> implements AsyncIterableIterator<T> {
  #items: T[] = [];
  #head = 0;
  #waiters: Array<{ resolve: (r: IteratorResult<T>) => void; reject: (e: Error) => void }> = [];
  #ended = false;
  #error: Error | undefined;
  readonly #limit: number;
  readonly #onReturn: () => void;

  constructor(limit: number, onReturn: () => void) {
    this.#limit = limit;
    this.#onReturn = onReturn;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Items waiting to be read. */
  get size(): number {
    return this.#items.length - this.#head;
  }

  push(item: T): void {
    if (this.#ended) return;
    const w = this.#waiters.shift();
    if (w) {
      w.resolve({ value: item, done: false });
      return;
    }
    if (this.size >= this.#limit) {
      this.end(
        new NexusError(
          "client_queue_full",
          `more than ${this.#limit} items waiting to be read: the consumer does not keep up`,
        ),
      );
      this.#onReturn();
      return;
    }
    this.#items.push(item);
  }

  /** No more items: readers get the rest, then done (or the error). */
  end(error?: Error): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    for (const w of this.#waiters.splice(0)) {
      if (error) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<T>> {
    if (this.size > 0) {
      const value = this.#items[this.#head++] as T;
      if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
        this.#items = this.#items.slice(this.#head);
        this.#head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.#ended) {
      return this.#error
        ? Promise.reject(this.#error)
        : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** A `for await` loop left early (break, throw): the owner stops its source. */
  return(): Promise<IteratorResult<T>> {
    if (!this.#ended) {
      this.end();
      this.#onReturn();
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
