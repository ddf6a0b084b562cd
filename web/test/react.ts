/** Rendering React trees in the hook and dashboard tests: one mount, one act-and-settle. */

import { act, type ReactNode } from "react";
import { createRoot, type Root } from "react-dom/client";
import { flush } from "./fakes";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

/** A React tree rendered into an element of its own in the document. */
export class Mounted {
  private constructor(
    readonly container: HTMLElement,
    private readonly root: Root,
  ) {}

  static async render(node: ReactNode): Promise<Mounted> {
    const container = document.createElement("div");
    document.body.appendChild(container);
    const mounted = new Mounted(container, createRoot(container));
    await inAct(() => mounted.root.render(node));
    return mounted;
  }

  /** Unmount the tree (running its cleanups) and remove its element. */
  async unmount(): Promise<void> {
    await inAct(() => this.root.unmount());
    this.container.remove();
  }
}

/** Run `fn` inside `act`, then let the promise callbacks it started run. */
export async function inAct(fn: () => void): Promise<void> {
  await act(async () => {
    fn();
    await flush();
  });
}
