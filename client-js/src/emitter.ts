/**
 * {@link Emitter}: typed listeners for the session's events.
 *
 * Events that come from the user's update log (messages, receipts, conversation changes) are never
 * lost for want of a listener: while a type has no listener its events wait in a bounded queue, and
 * the first listener of that type receives them (in order, right after it subscribes). So an app
 * that subscribes a moment after `Session.start` resolved still sees everything the first sync
 * brought. Other events (typing, presence, state) describe the present and are dropped when nobody
 * listens.
 *
 * A listener that throws does not disturb the session or the other listeners: its error is rethrown
 * on its own (in a microtask), as an `EventTarget` would report it.
 *
 * @module
 */

/** Events held for a type with no listener yet, at most; the oldest are dropped beyond. */
export const HELD_EVENTS_MAX = 10_000;

type Listener<T> = (event: T) => void;

/** Typed listeners; `M` maps event names to event values. */
export class Emitter<M extends object> {
  private readonly listeners = new Map<keyof M, Set<Listener<never>>>();
  private readonly held = new Map<keyof M, unknown[]>();
  private readonly holding: ReadonlySet<keyof M>;

  /** An emitter that holds the events of the types in `holding` until they have a listener. */
  constructor(holding: Iterable<keyof M>) {
    this.holding = new Set(holding);
  }

  /** Calls `fn` for every event of `type`; returns a function that unsubscribes it. */
  on<K extends keyof M>(type: K, fn: Listener<M[K]>): () => void {
    let set = this.listeners.get(type);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(type, set);
    }
    set.add(fn as Listener<never>);
    if (this.held.has(type)) {
      // Given out in a microtask, after `on` returned; events emitted meanwhile queue behind them.
      queueMicrotask(() => this.release(type));
    }
    return () => {
      set.delete(fn as Listener<never>);
    };
  }

  /** Whether `type` has a listener. */
  has(type: keyof M): boolean {
    return (this.listeners.get(type)?.size ?? 0) > 0;
  }

  /** Gives `event` to every listener of `type`, or holds it (see the module's docs). */
  emit<K extends keyof M>(type: K, event: M[K]): void {
    const held = this.held.get(type);
    if (held !== undefined || (!this.has(type) && this.holding.has(type))) {
      this.hold(type, held, event);
      return;
    }
    this.dispatch(type, event);
  }

  private hold<K extends keyof M>(type: K, held: unknown[] | undefined, event: M[K]): void {
    let queue = held;
    if (queue === undefined) {
      queue = [];
      this.held.set(type, queue);
    }
    queue.push(event);
    if (queue.length > HELD_EVENTS_MAX) {
      queue.shift();
    }
  }

  /** Gives the held events of `type` to its listeners, in order, if it has any by now. */
  private release<K extends keyof M>(type: K): void {
    const held = this.held.get(type);
    if (held === undefined || !this.has(type)) {
      return;
    }
    this.held.delete(type);
    for (const event of held) {
      this.dispatch(type, event as M[K]);
    }
  }

  private dispatch<K extends keyof M>(type: K, event: M[K]): void {
    const set = this.listeners.get(type);
    if (set === undefined) {
      return;
    }
    for (const fn of [...set]) {
      try {
        (fn as Listener<M[K]>)(event);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
