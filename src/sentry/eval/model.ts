// Models for `ainftp sentry eval`, with flat Float32Array parameters (what a
// worker all-reduces): multinomial logistic regression, and a one-hidden-
// layer ReLU network. Gradients are of the mean cross-entropy of a minibatch.
import { mulberry32 } from "../../random.ts";
import { gaussian, type Dataset } from "./data.ts";

export interface Model {
  /** Number of parameters. */
  readonly size: number;
  init(seed: number): Float32Array;
  /** Writes the gradient of the mean cross-entropy over rows idx into out
   * and returns that loss. labels replaces data.y (label-flipping workers). */
  gradient(params: Float32Array, data: Dataset, idx: ArrayLike<number>, out: Float32Array, labels?: Uint8Array): number;
  /** The predicted class of one row. */
  predict(params: Float32Array, data: Dataset, row: number): number;
}

/** Fraction of rows predicted right. */
export function accuracy(model: Model, params: Float32Array, data: Dataset): number {
  let right = 0;
  for (let r = 0; r < data.rows; r++) if (model.predict(params, data, r) === data.y[r]) right++;
  return right / data.rows;
}

/** p = softmax(z) in place over z[0..k). */
function softmax(z: Float64Array, k: number): void {
  let max = -Infinity;
  for (let c = 0; c < k; c++) if (z[c] > max) max = z[c];
  let total = 0;
  for (let c = 0; c < k; c++) total += z[c] = Math.exp(z[c] - max);
  for (let c = 0; c < k; c++) z[c] /= total;
}

function argmax(z: Float64Array, k: number): number {
  let best = 0;
  for (let c = 1; c < k; c++) if (z[c] > z[best]) best = c;
  return best;
}

function checkShape(data: Dataset, dim: number, classes: number): void {
  if (data.dim !== dim || data.classes !== classes)
    throw new RangeError(`model for ${dim} features / ${classes} classes given data with ${data.dim} / ${data.classes}`);
}

/** Multinomial logistic regression: params are W (classes x dim, row-major) then b (classes). */
export class SoftmaxRegression implements Model {
  readonly size: number;
  private readonly z: Float64Array;

  constructor(readonly dim: number, readonly classes: number) {
    this.size = classes * (dim + 1);
    this.z = new Float64Array(classes);
  }

  init(): Float32Array {
    return new Float32Array(this.size); // convex: zero is as good a start as any
  }

  private logits(w: Float32Array, x: Float32Array, off: number): void {
    const { dim, classes, z } = this;
    for (let c = 0; c < classes; c++) {
      let s = w[classes * dim + c];
      for (let j = 0; j < dim; j++) s += w[c * dim + j] * x[off + j];
      z[c] = s;
    }
  }

  gradient(w: Float32Array, data: Dataset, idx: ArrayLike<number>, out: Float32Array, labels = data.y): number {
    checkShape(data, this.dim, this.classes);
    const { dim, classes, z } = this;
    out.fill(0);
    let loss = 0;
    for (let i = 0; i < idx.length; i++) {
      const r = idx[i], off = r * dim;
      this.logits(w, data.x, off);
      const y = labels[r];
      softmax(z, classes);
      loss -= Math.log(Math.max(z[y], 1e-300));
      z[y] -= 1; // dLoss/dlogit = p - onehot
      for (let c = 0; c < classes; c++) {
        const g = z[c];
        for (let j = 0; j < dim; j++) out[c * dim + j] += g * data.x[off + j];
        out[classes * dim + c] += g;
      }
    }
    const inv = 1 / idx.length;
    for (let k = 0; k < out.length; k++) out[k] *= inv;
    return loss * inv;
  }

  predict(w: Float32Array, data: Dataset, row: number): number {
    this.logits(w, data.x, row * data.dim);
    return argmax(this.z, this.classes);
  }
}

/** One hidden layer of ReLU units: params are W1 (hidden x dim), b1 (hidden),
 * W2 (classes x hidden), b2 (classes). */
export class Mlp implements Model {
  readonly size: number;
  private readonly h: Float64Array;
  private readonly dh: Float64Array;
  private readonly z: Float64Array;
  private readonly o: { b1: number; w2: number; b2: number };

  constructor(readonly dim: number, readonly hidden: number, readonly classes: number) {
    this.o = { b1: hidden * dim, w2: hidden * dim + hidden, b2: hidden * dim + hidden + classes * hidden };
    this.size = this.o.b2 + classes;
    this.h = new Float64Array(hidden);
    this.dh = new Float64Array(hidden);
    this.z = new Float64Array(classes);
  }

  /** He initialization of the weights, zero biases. */
  init(seed: number): Float32Array {
    const rng = mulberry32(seed);
    const p = new Float32Array(this.size);
    const s1 = Math.sqrt(2 / this.dim), s2 = Math.sqrt(2 / this.hidden);
    for (let k = 0; k < this.o.b1; k++) p[k] = s1 * gaussian(rng);
    for (let k = this.o.w2; k < this.o.b2; k++) p[k] = s2 * gaussian(rng);
    return p;
  }

  private forward(p: Float32Array, x: Float32Array, off: number): void {
    const { dim, hidden, classes, h, z, o } = this;
    for (let u = 0; u < hidden; u++) {
      let s = p[o.b1 + u];
      for (let j = 0; j < dim; j++) s += p[u * dim + j] * x[off + j];
      h[u] = s > 0 ? s : 0;
    }
    for (let c = 0; c < classes; c++) {
      let s = p[o.b2 + c];
      for (let u = 0; u < hidden; u++) s += p[o.w2 + c * hidden + u] * h[u];
      z[c] = s;
    }
  }

  gradient(p: Float32Array, data: Dataset, idx: ArrayLike<number>, out: Float32Array, labels = data.y): number {
    checkShape(data, this.dim, this.classes);
    const { dim, hidden, classes, h, dh, z, o } = this;
    out.fill(0);
    let loss = 0;
    for (let i = 0; i < idx.length; i++) {
      const r = idx[i], off = r * dim;
      this.forward(p, data.x, off);
      const y = labels[r];
      softmax(z, classes);
      loss -= Math.log(Math.max(z[y], 1e-300));
      z[y] -= 1;
      dh.fill(0);
      for (let c = 0; c < classes; c++) {
        const g = z[c];
        for (let u = 0; u < hidden; u++) {
          out[o.w2 + c * hidden + u] += g * h[u];
          dh[u] += g * p[o.w2 + c * hidden + u];
        }
        out[o.b2 + c] += g;
      }
      for (let u = 0; u < hidden; u++) {
        if (h[u] <= 0) continue; // ReLU gate
        const g = dh[u];
        for (let j = 0; j < dim; j++) out[u * dim + j] += g * data.x[off + j];
        out[o.b1 + u] += g;
      }
    }
    const inv = 1 / idx.length;
    for (let k = 0; k < out.length; k++) out[k] *= inv;
    return loss * inv;
  }

  predict(p: Float32Array, data: Dataset, row: number): number {
    this.forward(p, data.x, row * data.dim);
    return argmax(this.z, this.classes);
  }
}
