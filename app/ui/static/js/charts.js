// Live job curves with the vendored uPlot: the training loss, and one chart per headline metric whose series are
// the evaluation splits, each with its base model's value (step 0) as a dashed horizontal line.
/* global uPlot */

import { h } from "./dom.js";

export const HEADLINE = ["ndcg@10", "recall@100", "mrr@10"];
const COLORS = ["#2f6fde", "#d9822b", "#1f8a4c", "#8e44ad", "#c0362c", "#16a0a0"];
const SIZE = { width: 540, height: 240 };

/** A uPlot chart in a box; rebuilt when its series change, else fed new data in place. */
class Chart {
  constructor(title, id) {
    this.title = title;
    this.box = h("div", { class: "chart", id, dataset: { points: "0", baselines: "0" } }, h("div", { class: "muted" }, title));
    this.plot = null;
    this.signature = "";
  }

  update(series, data, stats) {
    const signature = series.map((s) => s.label).join("|");
    if (this.plot && signature === this.signature) this.plot.setData(data);
    else {
      if (this.plot) this.plot.destroy();
      const opts = { ...SIZE, scales: { x: { time: false } }, axes: [{ label: "step" }, {}], series: [{ label: "step" }, ...series] };
      this.plot = new uPlot(opts, data, this.box);
      this.signature = signature;
    }
    this.box.dataset.points = String(stats.points);
    this.box.dataset.baselines = String(stats.baselines);
  }
}

export class LossChart extends Chart {
  constructor() { super("training loss", "chart-loss"); }

  update(points) {
    const loss = points.filter((p) => p.name === "loss").sort((a, b) => a.step - b.step);
    super.update([{ label: "loss", stroke: COLORS[0], width: 2 }], [loss.map((p) => p.step), loss.map((p) => p.value)],
      { points: loss.length, baselines: 0 });
  }
}

export class MetricChart extends Chart {
  constructor(metric) {
    super(metric, `chart-${metric.replace(/[^\w]/g, "-")}`);
    this.metric = metric;
  }

  /** ``lastStep`` stretches the base lines across the run even before a second evaluation exists. */
  update(points, lastStep) {
    const mine = points.filter((p) => p.name === this.metric);
    const splits = [...new Set(mine.map((p) => p.split))].sort();
    const steps = [...new Set([...mine.map((p) => p.step), ...(lastStep > 0 && mine.length ? [lastStep] : [])])].sort((a, b) => a - b);
    const series = [];
    const data = [steps];
    let baselines = 0;
    splits.forEach((split, i) => {
      const bySplit = new Map(mine.filter((p) => p.split === split).map((p) => [p.step, p.value]));
      const color = COLORS[i % COLORS.length];
      series.push({ label: split, stroke: color, width: 2, spanGaps: true, points: { show: true, size: 6 } });
      data.push(steps.map((s) => (bySplit.has(s) ? bySplit.get(s) : null)));
      if (bySplit.has(0)) {
        series.push({ label: `${split} base (step 0)`, stroke: color, dash: [6, 4], width: 1, points: { show: false } });
        data.push(steps.map(() => bySplit.get(0)));
        baselines += 1;
      }
    });
    super.update(series, data, { points: mine.length, baselines });
  }
}
