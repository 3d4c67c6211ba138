/**
 * A queue that runs async operations one at a time, in arrival order (the
 * API's lifecycle requests: start, pause, resume, shutdown, snapshots).
 *
 * @module
 */

/**
 * Returns a function that runs each given operation after the previous one
 * settled; each caller gets its own operation's result or error.
 *
 * @example
 * ```ts
 * import { serialQueue } from "./serial.ts";
 * const serial = serialQueue();
 * const order: number[] = [];
 * await Promise.all([serial(async () => order.push(1)), serial(async () => order.push(2))]);
 * console.log(order); // [1, 2]
 * ```
 */
export function serialQueue(): <T>(fn: () => Promise<T>) => Promise<T> {
  let queue: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch((_err: unknown) => undefined); // errors reach the caller through `run`
    return run;
  };
}
