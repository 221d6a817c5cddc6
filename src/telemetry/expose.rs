//! `/metrics` through the Prometheus project's client (`prometheus-client`):
//! it writes the exposition (OpenMetrics text, HELP/TYPE lines, label
//! escaping, the `_total` suffix of counter samples, `# EOF`); each module
//! keeps its figures where they are counted and hands them over at scrape
//! time through these few calls.
//!
//! Why scrape-time collection rather than the crate's own metric types:
//! the hot paths count on plain atomics behind handles resolved once per
//! (product, source) or per upstream, and many figures are read from the
//! store when scraped (outbox depth, journal size). A collector reads them
//! once per scrape; the call sites stay a relaxed `fetch_add`.
//!
//! Names are written in full (`meshlet_x_total`) at the call: grep finds a
//! series by the name a dashboard uses. OpenMetrics names a counter's family
//! without `_total` (`# TYPE meshlet_x counter`) and its sample with it
//! (`meshlet_x_total 3`); [`counter_family`] strips the suffix.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use prometheus_client::encoding::DescriptorEncoder as Encoder;

/// The Content-Type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape's families return: only a formatter error (the text
/// goes into a `String`, so in practice never).
pub type Encoded = Result<(), fmt::Error>;

/// Renders one scrape of `collector` as OpenMetrics text.
pub fn render(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut text = String::with_capacity(16 * 1024);
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        // Writing into a String does not fail; if it ever did, say so
        // rather than serve a cut exposition silently.
        tracing::error!(error = %err, "encoding /metrics failed");
    }
    text
}

/// Renders what `encode` writes: for a part of the exposition on its own
/// (tests, benches); `encode` owns (clones) what it reads.
pub fn render_fn<F>(encode: F) -> String
where
    F: Fn(&mut DescriptorEncoder<'_>) -> Encoded + Send + Sync + 'static,
{
    struct FnCollector<F>(F);
    impl<F> fmt::Debug for FnCollector<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("FnCollector")
        }
    }
    impl<F> Collector for FnCollector<F>
    where
        F: Fn(&mut DescriptorEncoder<'_>) -> Encoded + Send + Sync + 'static,
    {
        fn encode(&self, mut enc: DescriptorEncoder) -> Encoded {
            (self.0)(&mut enc)
        }
    }
    render(FnCollector(encode))
}

/// A counter family: samples `{name}{labels} value`, `name` ending in
/// `_total`.
pub struct CounterFamily<'a>(MetricEncoder<'a>);

/// A gauge family.
pub struct GaugeFamily<'a>(MetricEncoder<'a>);

/// Starts a counter family; `name` is the sample name (ends in `_total`).
pub fn counter_family<'s>(
    enc: &'s mut DescriptorEncoder<'_>,
    name: &'s str,
    help: &str,
) -> Result<CounterFamily<'s>, fmt::Error> {
    debug_assert!(
        name.ends_with("_total"),
        "counter {name} must end in _total"
    );
    let family = name.strip_suffix("_total").unwrap_or(name);
    enc.encode_descriptor(family, help, None, MetricType::Counter)
        .map(CounterFamily)
}

/// Starts a gauge family.
pub fn gauge_family<'s>(
    enc: &'s mut DescriptorEncoder<'_>,
    name: &'s str,
    help: &str,
) -> Result<GaugeFamily<'s>, fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)
        .map(GaugeFamily)
}

/// Starts a histogram family (samples through [`MetricEncoder::encode_histogram`]).
pub fn histogram_family<'s>(
    enc: &'s mut DescriptorEncoder<'_>,
    name: &'s str,
    help: &str,
) -> Result<MetricEncoder<'s>, fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Histogram)
}

/// One unlabelled counter.
pub fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> Encoded {
    counter_family(enc, name, help)?.value(value)
}

/// One unlabelled gauge.
pub fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> Encoded {
    gauge_family(enc, name, help)?.value(value)
}

impl CounterFamily<'_> {
    /// The family's one sample without labels.
    pub fn value(&mut self, value: impl EncodeCounterValue) -> Encoded {
        self.0.encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    /// One sample with `labels` (`[("upstream", name), ...]`).
    pub fn sample(
        &mut self,
        labels: &impl EncodeLabelSet,
        value: impl EncodeCounterValue,
    ) -> Encoded {
        self.0
            .encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)
    }
}

impl GaugeFamily<'_> {
    /// The family's one sample without labels.
    pub fn value(&mut self, value: impl EncodeGaugeValue) -> Encoded {
        self.0.encode_gauge(&value)
    }

    /// One sample with `labels`.
    pub fn sample(
        &mut self,
        labels: &impl EncodeLabelSet,
        value: impl EncodeGaugeValue,
    ) -> Encoded {
        self.0.encode_family(labels)?.encode_gauge(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Two;

    impl Collector for Two {
        fn encode(&self, mut enc: DescriptorEncoder) -> Encoded {
            counter(&mut enc, "meshlet_a_total", "A counter.", 3u64)?;
            let mut g = gauge_family(&mut enc, "meshlet_b", "A gauge.")?;
            g.sample(&[("upstream", "x\"y")], 1.5f64)?;
            g.sample(&[("upstream", "z")], -2i64)
        }
    }

    #[test]
    fn families_keep_their_sample_names_and_escape_labels() {
        let text = render(Two);
        assert_eq!(
            text,
            "# HELP meshlet_a A counter.\n# TYPE meshlet_a counter\nmeshlet_a_total 3\n\
             # HELP meshlet_b A gauge.\n# TYPE meshlet_b gauge\n\
             meshlet_b{upstream=\"x\\\"y\"} 1.5\nmeshlet_b{upstream=\"z\"} -2\n# EOF\n"
        );
    }
}
