// Latency summaries: percentiles and a CDF small enough to keep in the run's JSON.

const CDF_QUANTILES = [
  ...Array.from({ length: 100 }, (_, i) => i / 100),
  0.995, 0.999, 0.9995, 0.9999, 1,
];

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// µs to ms, to the microsecond.
const ms = (us) => Math.round(us) / 1000;

// Latencies in µs in, milliseconds out.
export function summarize(latenciesUs) {
  if (latenciesUs.length === 0) return { count: 0 };
  const sorted = Float64Array.from(latenciesUs).sort();
  let sum = 0;
  for (const value of sorted) sum += value;
  return {
    count: sorted.length,
    mean_ms: ms(sum / sorted.length),
    p50_ms: ms(quantile(sorted, 0.5)),
    p95_ms: ms(quantile(sorted, 0.95)),
    p99_ms: ms(quantile(sorted, 0.99)),
    p999_ms: ms(quantile(sorted, 0.999)),
    min_ms: ms(sorted[0]),
    max_ms: ms(sorted[sorted.length - 1]),
    cdf: CDF_QUANTILES.map((q) => [ms(quantile(sorted, q)), q]),
  };
}

// Per `bucketS` of send time (an event's seq over the rate, from `fromSeq`): how many
// events arrived and their p50, p99 and worst latency in ms. A p99 made by one stall shows
// as one bad bucket; one made by a backlog, as buckets growing worse until it drains.
export function timeline(seqs, latenciesUs, rate, fromSeq, bucketS = 0.5) {
  const buckets = [];
  for (let i = 0; i < seqs.length; i++) {
    const at = Math.floor((seqs[i] - fromSeq) / rate / bucketS);
    if (at < 0) continue;
    (buckets[at] ??= []).push(latenciesUs[i]);
  }
  return Array.from(buckets, (bucket, at) => {
    const sorted = Float64Array.from(bucket ?? []).sort();
    if (sorted.length === 0) return { at_s: at * bucketS, count: 0 };
    return {
      at_s: at * bucketS,
      count: sorted.length,
      p50_ms: ms(quantile(sorted, 0.5)),
      p99_ms: ms(quantile(sorted, 0.99)),
      max_ms: ms(sorted[sorted.length - 1]),
    };
  });
}

// How many distinct seqs in [0, count) a receiver got, and how many it got more than once.
export function tally(seqs, count) {
  const seen = new Uint8Array(count);
  let duplicates = 0;
  let distinct = 0;
  for (const seq of seqs) {
    if (seq < 0 || seq >= count) continue;
    if (seen[seq]) duplicates++;
    else {
      seen[seq] = 1;
      distinct++;
    }
  }
  return { distinct, duplicates, lost: count - distinct };
}
