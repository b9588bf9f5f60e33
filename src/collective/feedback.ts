// Error feedback (issue 14): what quantization took from a call's gradient
// is added to the next call's gradient of the same buffer, so over many
// steps nothing is lost, only delayed (THC, and 1-bit SGD before it). The
// communicator keeps one residual per key (a gradient bucket, or the array
// itself); at 8 and 4 bits allreduce uses it unless the caller passes its
// own `residual` (the DDP hook keeps its own in HookState).

/** Residuals by key: each as long as its buffer, zero at first. */
export class ErrorFeedback {
  private readonly residuals = new WeakMap<object, Float32Array>();
  private readonly inputs = new WeakMap<object, Float32Array>();

  /** The residual kept for `key` (zeros for a new key, or one whose length changed). */
  residual(key: object, n: number): Float32Array {
    let r = this.residuals.get(key);
    if (!r || r.length !== n) this.residuals.set(key, (r = new Float32Array(n)));
    return r;
  }

  /** x plus the residual kept for `key`, in a buffer reused for that key: what
   * the call quantizes. The caller then hands residual(key) to the round,
   * which overwrites it with this call's error. */
  input(key: object, x: Float32Array): Float32Array {
    const r = this.residual(key, x.length);
    let b = this.inputs.get(key);
    if (!b || b.length !== x.length) this.inputs.set(key, (b = new Float32Array(x.length)));
    for (let i = 0; i < x.length; i++) b[i] = x[i] + r[i];
    return b;
  }

  /** Forgets the residual of `key` (a new model, a restarted step count). */
  reset(key: object): void {
    this.residuals.delete(key);
    this.inputs.delete(key);
  }
}
