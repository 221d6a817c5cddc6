//! MQTT topic templates: a topic filter whose levels can capture fields.
//!
//! `plant/{site}/machine/{machine_id}/telemetry` subscribes to
//! `plant/+/machine/+/telemetry` and, for a message on
//! `plant/berlin/machine/m7/telemetry`, yields `site = berlin`,
//! `machine_id = m7`.
//!
//! Rules (each refused with its own message):
//! - levels are separated by `/`; a level is a literal, a capture
//!   `{field}` (the whole level, the name a valid field identifier, each
//!   name once), `+` (any one level) or `#` (any remaining levels, last only);
//! - literals may not contain `+`, `#`, `{`, `}` or NUL;
//! - **empty levels are allowed** (`/devices/x`, `a//b`): MQTT allows them
//!   and devices that publish with a leading slash exist and cannot always be
//!   changed; an empty literal level matches only an empty level;
//! - **a capture never matches an empty level**: an empty entity key or
//!   field value is never what a device meant, so such a topic does not
//!   match (the ingest counts it as unmatched);
//! - as in MQTT, a template starting with a wildcard or capture does not
//!   match topics starting with `$` (broker-internal topics like `$SYS`);
//! - at most 65,535 bytes, the MQTT limit.

use std::fmt;

/// One level of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    SingleWildcard,
    MultiWildcard,
}

/// A parsed topic template. Cheap to clone; compare by text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    levels: Vec<Level>,
}

/// The MQTT limit on topic length, in bytes.
const MAX_TOPIC_BYTES: usize = 65_535;

impl TopicTemplate {
    /// Parses a template; the error says what is wrong and what was expected.
    pub fn parse(text: &str) -> Result<TopicTemplate, String> {
        if text.is_empty() {
            return Err("empty topic template: expected levels separated by `/`, e.g. plant/{site}/telemetry".into());
        }
        if text.len() > MAX_TOPIC_BYTES {
            return Err(format!(
                "topic template is {} bytes: mqtt topics are at most {MAX_TOPIC_BYTES} bytes",
                text.len()
            ));
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let number = i + 1;
            let level = parse_level(part, number)?;
            if level == Level::MultiWildcard && number != parts.len() {
                return Err(format!(
                    "`#` at level {number} of {}: `#` matches the rest of the topic and must be the last level",
                    parts.len()
                ));
            }
            if let Level::Capture(name) = &level {
                if levels.contains(&level) {
                    return Err(format!(
                        "field `{name}` is captured twice: each field may be captured from one level only"
                    ));
                }
            }
            levels.push(level);
        }
        Ok(TopicTemplate {
            text: text.to_string(),
            levels,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The MQTT subscription filter: captures become `+`.
    pub fn filter(&self) -> String {
        let levels: Vec<&str> = self
            .levels
            .iter()
            .map(|level| match level {
                Level::Literal(text) => text.as_str(),
                Level::Capture(_) | Level::SingleWildcard => "+",
                Level::MultiWildcard => "#",
            })
            .collect();
        levels.join("/")
    }

    /// The captured field names, in level order.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|level| match level {
            Level::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Matches a concrete topic; on a match, the captured `(field, value)`
    /// pairs in level order (empty when the template captures nothing).
    pub fn match_topic<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let starts_with_pattern = matches!(
            self.levels.first(),
            Some(Level::Capture(_) | Level::SingleWildcard | Level::MultiWildcard)
        );
        if starts_with_pattern && topic.starts_with('$') {
            return None;
        }
        let mut captured = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::MultiWildcard => return Some(captured),
                Level::Literal(text) => {
                    if parts.next()? != text {
                        return None;
                    }
                }
                Level::SingleWildcard => {
                    parts.next()?;
                }
                Level::Capture(name) => {
                    let value = parts.next()?;
                    if value.is_empty() {
                        return None;
                    }
                    captured.push((name.as_str(), value));
                }
            }
        }
        match parts.next() {
            None => Some(captured),
            Some(_) => None,
        }
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_level(part: &str, number: usize) -> Result<Level, String> {
    match part {
        "+" => return Ok(Level::SingleWildcard),
        "#" => return Ok(Level::MultiWildcard),
        _ => {}
    }
    if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
        if inner.contains(['{', '}']) {
            return Err(format!(
                "unbalanced braces in level {number} `{part}`: a capture is written `{{field}}`"
            ));
        }
        if !super::field::is_identifier(inner) {
            return Err(format!(
                "capture `{{{inner}}}` in level {number} is not a field name: expected letters, digits and `_`, not starting with a digit"
            ));
        }
        return Ok(Level::Capture(inner.to_string()));
    }
    let opens = part.matches('{').count();
    let closes = part.matches('}').count();
    if opens != closes {
        return Err(format!(
            "unbalanced braces in level {number} `{part}`: a capture is written `{{field}}`"
        ));
    }
    if opens > 0 {
        return Err(format!(
            "capture inside level {number} `{part}`: a capture must be a whole level, e.g. machine/{{machine_id}}"
        ));
    }
    if let Some(wildcard) = part.chars().find(|c| matches!(c, '+' | '#')) {
        return Err(format!(
            "wildcard `{wildcard}` inside level {number} `{part}`: `+` and `#` must be a whole level"
        ));
    }
    if part.contains('\0') {
        return Err(format!(
            "level {number} contains a NUL character, which mqtt forbids"
        ));
    }
    Ok(Level::Literal(part.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        TopicTemplate::parse(text).unwrap_err()
    }

    #[test]
    fn filter_turns_captures_into_plus() {
        let t = TopicTemplate::parse("plant/{site}/machine/{machine_id}/telemetry").unwrap();
        assert_eq!(t.filter(), "plant/+/machine/+/telemetry");
        assert_eq!(t.captures().collect::<Vec<_>>(), ["site", "machine_id"]);
        assert_eq!(t.as_str(), "plant/{site}/machine/{machine_id}/telemetry");
        let t = TopicTemplate::parse("meters/{meter_id}/#").unwrap();
        assert_eq!(t.filter(), "meters/+/#");
    }

    #[test]
    fn match_yields_captures_in_order() {
        let t = TopicTemplate::parse("plant/{site}/machine/{machine_id}/telemetry").unwrap();
        assert_eq!(
            t.match_topic("plant/berlin/machine/m7/telemetry"),
            Some(vec![("site", "berlin"), ("machine_id", "m7")])
        );
        assert_eq!(t.match_topic("plant/berlin/machine/m7/status"), None);
        assert_eq!(t.match_topic("plant/berlin/machine/m7"), None);
        assert_eq!(t.match_topic("plant/berlin/machine/m7/telemetry/x"), None);
        assert_eq!(
            t.match_topic("plant//machine/m7/telemetry"),
            None,
            "empty capture"
        );
    }

    #[test]
    fn plus_matches_one_level_hash_the_rest() {
        let t = TopicTemplate::parse("a/+/{id}/#").unwrap();
        assert_eq!(t.match_topic("a/x/7/b/c"), Some(vec![("id", "7")]));
        assert_eq!(
            t.match_topic("a/x/7"),
            Some(vec![("id", "7")]),
            "# matches zero levels"
        );
        assert_eq!(
            t.match_topic("a//7/b"),
            Some(vec![("id", "7")]),
            "+ matches an empty level"
        );
        assert_eq!(t.match_topic("a/x"), None);
        let all = TopicTemplate::parse("#").unwrap();
        assert_eq!(all.match_topic("x/y"), Some(vec![]));
        assert_eq!(
            all.match_topic("$SYS/broker"),
            None,
            "wildcards skip $ topics"
        );
        let sys = TopicTemplate::parse("$SYS/{name}").unwrap();
        assert_eq!(
            sys.match_topic("$SYS/uptime"),
            Some(vec![("name", "uptime")])
        );
    }

    #[test]
    fn empty_levels_are_literal_levels() {
        let t = TopicTemplate::parse("/devices/{id}").unwrap();
        assert_eq!(t.filter(), "/devices/+");
        assert_eq!(t.match_topic("/devices/d1"), Some(vec![("id", "d1")]));
        assert_eq!(t.match_topic("devices/d1"), None);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert_eq!(
            err(""),
            "empty topic template: expected levels separated by `/`, e.g. plant/{site}/telemetry"
        );
        assert_eq!(
            err("plant/{site/x"),
            "unbalanced braces in level 2 `{site`: a capture is written `{field}`"
        );
        assert_eq!(
            err("plant/site}/x"),
            "unbalanced braces in level 2 `site}`: a capture is written `{field}`"
        );
        assert_eq!(
            err("plant/{{site}}"),
            "unbalanced braces in level 2 `{{site}}`: a capture is written `{field}`"
        );
        assert_eq!(
            err("machine/m{id}"),
            "capture inside level 2 `m{id}`: a capture must be a whole level, e.g. machine/{machine_id}"
        );
        assert_eq!(
            err("{id}/x/{id}"),
            "field `id` is captured twice: each field may be captured from one level only"
        );
        assert_eq!(
            err("a/#/b"),
            "`#` at level 2 of 3: `#` matches the rest of the topic and must be the last level"
        );
        assert_eq!(
            err("a/b+c"),
            "wildcard `+` inside level 2 `b+c`: `+` and `#` must be a whole level"
        );
        assert_eq!(
            err("a/{9lives}"),
            "capture `{9lives}` in level 2 is not a field name: expected letters, digits and `_`, not starting with a digit"
        );
        assert_eq!(
            err("a/{}"),
            "capture `{}` in level 2 is not a field name: expected letters, digits and `_`, not starting with a digit"
        );
    }
}
