//! Quality, history and retention policies: what the pipeline and the
//! store do with a product's records over time.

use std::time::Duration;

use super::diagnostic::Diagnostics;
use super::reader::{self, Entry, MapReader};

/// What happens to a record that breaks the product's field rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnInvalid {
    /// Refused; an MQTT or HTTP sender gets an error where the protocol
    /// allows one.
    Reject,
    /// Kept aside, with the reason, for inspection and replay. The default:
    /// nothing is silently lost.
    #[default]
    Quarantine,
    /// The offending fields are dropped and the rest of the record kept.
    DropField,
}

impl OnInvalid {
    pub const NAMES: [&'static str; 3] = ["reject", "quarantine", "drop_field"];

    pub fn name(self) -> &'static str {
        match self {
            OnInvalid::Reject => "reject",
            OnInvalid::Quarantine => "quarantine",
            OnInvalid::DropField => "drop_field",
        }
    }

    fn from_name(name: &str) -> Option<OnInvalid> {
        [
            OnInvalid::Reject,
            OnInvalid::Quarantine,
            OnInvalid::DropField,
        ]
        .into_iter()
        .find(|o| o.name() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QualityPolicy {
    pub on_invalid: OnInvalid,
    /// Most quarantined records kept per product; the oldest go first when
    /// full (counted). Default 10,000.
    pub quarantine_max: u64,
}

impl Default for QualityPolicy {
    fn default() -> Self {
        QualityPolicy {
            on_invalid: OnInvalid::Quarantine,
            quarantine_max: 10_000,
        }
    }
}

/// How much of an entity's past the store keeps. Both limits apply when
/// both are set; `None` means no limit of that kind (the store's disk
/// budget still applies). `keep: 0` keeps no history, only the instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Most events kept per entity.
    pub keep: Option<u64>,
    /// Events older than this are dropped.
    pub max_age: Option<Duration>,
}

/// When whole instances go away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// An instance not updated for this long is deleted (with an audit
    /// line). `None`: instances live until erased.
    pub expire_after: Option<Duration>,
}

pub(crate) fn parse_quality(entry: &Entry<'_>, diags: &mut Diagnostics) -> QualityPolicy {
    let mut policy = QualityPolicy::default();
    let Some(map) = MapReader::open(
        entry,
        "quality settings, e.g. `{ on_invalid: quarantine }`",
        &["on_invalid", "quarantine_max"],
        diags,
    ) else {
        return policy;
    };
    if let Some(on_invalid) = map
        .get("on_invalid")
        .and_then(|e| reader::choice(&e, "on_invalid policy", &OnInvalid::NAMES, diags))
        .and_then(OnInvalid::from_name)
    {
        policy.on_invalid = on_invalid;
    }
    if let Some(max) = map
        .get("quarantine_max")
        .and_then(|e| reader::integer(&e, 1, u64::MAX, diags))
    {
        policy.quarantine_max = max;
    }
    policy
}

pub(crate) fn parse_history(entry: &Entry<'_>, diags: &mut Diagnostics) -> HistoryPolicy {
    let Some(map) = MapReader::open(
        entry,
        "history settings, e.g. `{ keep: 10000, max_age: 7d }`",
        &["keep", "max_age"],
        diags,
    ) else {
        return HistoryPolicy::default();
    };
    HistoryPolicy {
        keep: map
            .get("keep")
            .and_then(|e| reader::integer(&e, 0, u64::MAX, diags)),
        max_age: map.get("max_age").and_then(|e| reader::duration(&e, diags)),
    }
}

pub(crate) fn parse_retention(entry: &Entry<'_>, diags: &mut Diagnostics) -> RetentionPolicy {
    let Some(map) = MapReader::open(
        entry,
        "retention settings, e.g. `{ expire_after: 30d }`",
        &["expire_after"],
        diags,
    ) else {
        return RetentionPolicy::default();
    };
    RetentionPolicy {
        expire_after: map
            .get("expire_after")
            .and_then(|e| reader::duration(&e, diags)),
    }
}
