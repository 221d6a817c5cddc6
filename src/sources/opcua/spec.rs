//! The `opcua:` source definition and its checks.
//!
//! ```yaml
//! sources:
//!   - opcua:
//!       endpoint: opc.tcp://10.0.0.9:4840/plc/
//!       publishing_interval: 1s      # default 1s
//!       security: none               # the only mode this build speaks
//!       user: { name: meshlet, password_env: PLC_OPCUA_PASSWORD }   # default anonymous
//!       time_field: seen_at          # optional: a timestamp field the cycle's arrival fills
//!       entities:
//!         - key: line-1
//!           nodes:
//!             speed_rpm: "ns=2;s=Line1.Speed"
//!             running:   "ns=2;i=1002"
//! ```

use std::time::Duration;

use indexmap::IndexMap;

use crate::product::diagnostic::Diagnostics;
use crate::product::reader::{
    self, elements, entries, expect_list, expect_mapping, Entry, MapReader,
};
use crate::product::source::{time_field, SourceContext};

/// Monitored nodes of one OPC UA server, one record per entity per
/// publishing cycle in which one of its nodes changed.
#[derive(Clone, Debug)]
pub struct OpcuaSource {
    /// `opc.tcp://host:port/path`.
    pub endpoint: String,
    /// How often the server sends the changes it sampled (the OPC UA
    /// subscription's publishing interval; the sampling interval is the
    /// same).
    pub publishing_interval: Duration,
    /// `None`: anonymous.
    pub user: Option<OpcuaUser>,
    pub entities: Vec<OpcuaEntity>,
    /// A timestamp field each record's arrival time fills (and its event
    /// time is then read from).
    pub time_field: Option<String>,
}

/// A user name and the environment variable holding its password: a
/// definition travels (sync, contracts, git); a password must not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpcuaUser {
    pub name: String,
    pub password_env: String,
}

/// One entity: its key and the nodes its fields are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpcuaEntity {
    /// The value of the product's key field in this entity's records.
    pub key: String,
    /// Field → node id, in the standard string form (`ns=2;s=Line1.Speed`,
    /// `ns=3;i=1001`, `i=2258`).
    pub nodes: IndexMap<String, String>,
}

const KEYS: &[&str] = &[
    "endpoint",
    "publishing_interval",
    "security",
    "user",
    "entities",
    "time_field",
];
const USER_KEYS: &[&str] = &["name", "password_env"];
const ENTITY_KEYS: &[&str] = &["key", "nodes"];
const SECURITY: [&str; 3] = ["none", "sign", "sign_and_encrypt"];
const DEFAULT_PUBLISHING: Duration = Duration::from_secs(1);
/// OPC UA servers revise intervals below their minimum up; below this a
/// gateway would spend its cores on notifications.
const MIN_PUBLISHING: Duration = Duration::from_millis(50);

/// Parses an `opcua:` source; every problem is a diagnostic.
pub(crate) fn parse(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<OpcuaSource> {
    let map = MapReader::open(
        entry,
        "opcua source settings, e.g. `{ endpoint: opc.tcp://10.0.0.9:4840/, entities: [{ key: line-1, nodes: { speed_rpm: \"ns=2;s=Line1.Speed\" } }] }`",
        KEYS,
        diags,
    )?;
    let endpoint = map.required("endpoint", diags).and_then(|e| {
        let text = reader::non_empty_string(&e, diags)?;
        match endpoint_url(&text) {
            Ok(()) => Some(text),
            Err(problem) => {
                diags.push(e.at(), &e.path, problem);
                None
            }
        }
    });
    let publishing_interval = match map.get("publishing_interval") {
        None => Some(DEFAULT_PUBLISHING),
        Some(e) => reader::duration(&e, diags).and_then(|d| {
            if d < MIN_PUBLISHING {
                diags.push(
                    e.at(),
                    &e.path,
                    format!(
                        "publishing_interval {} is below the least this source asks for, {}ms",
                        humantime::format_duration(d),
                        MIN_PUBLISHING.as_millis()
                    ),
                );
                None
            } else {
                Some(d)
            }
        }),
    };
    let security = match map.get("security") {
        None => Some(()),
        Some(e) => match reader::choice(&e, "opcua security mode", &SECURITY, diags) {
            Some("none") => Some(()),
            Some(mode) => {
                diags.push(
                    e.at(),
                    &e.path,
                    format!(
                        "security `{mode}` is not supported yet: this meshlet's OPC UA client opens channels with security mode none only (run it on a trusted network or a VPN)"
                    ),
                );
                None
            }
            None => None,
        },
    };
    let user = match map.get("user") {
        None => Some(None),
        Some(e) => user(&e, diags).map(Some),
    };
    let entities = map
        .required("entities", diags)
        .and_then(|e| entities(&e, ctx, diags));
    let time_field = match map.get("time_field") {
        None => Some(None),
        Some(e) => time_field(&e, ctx, diags)
            .filter(|name| {
                let read = entities
                    .as_ref()
                    .is_some_and(|all| all.iter().any(|en| en.nodes.contains_key(name)));
                if read {
                    diags.push(e.at(), &e.path, format!("field `{name}` is both read from a node and filled with the arrival time; keep one"));
                }
                !read
            })
            .map(Some),
    };
    security?;
    Some(OpcuaSource {
        endpoint: endpoint?,
        publishing_interval: publishing_interval?,
        user: user?,
        entities: entities?,
        time_field: time_field?,
    })
}

/// `opc.tcp://host[:port][/path]`.
fn endpoint_url(text: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!(
            "invalid OPC UA endpoint `{}`: {why}; expected opc.tcp://host:port/path, e.g. opc.tcp://10.0.0.9:4840/",
            reader::shorten(text)
        )
    };
    let Some(rest) = text.strip_prefix("opc.tcp://") else {
        return Err(bad("it must start with opc.tcp://"));
    };
    if text.contains(char::is_whitespace) {
        return Err(bad("it contains a space"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
            if port.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
                return Err(bad("its port is not a number from 1 to 65535"));
            }
            host
        }
        _ => authority,
    };
    if host.is_empty() {
        return Err(bad("it names no host"));
    }
    Ok(())
}

fn user(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<OpcuaUser> {
    let map = MapReader::open(
        entry,
        "a user, e.g. `{ name: meshlet, password_env: PLC_OPCUA_PASSWORD }`",
        USER_KEYS,
        diags,
    )?;
    let name = map
        .required("name", diags)
        .and_then(|e| reader::non_empty_string(&e, diags));
    let password_env = map.required("password_env", diags).and_then(|e| {
        let text = reader::non_empty_string(&e, diags)?;
        let valid = text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !text.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            diags.push(
                e.at(),
                &e.path,
                format!(
                    "`{}` is not an environment variable name (letters, digits and _, not starting with a digit); the password itself never goes in a definition",
                    reader::shorten(&text)
                ),
            );
            return None;
        }
        Some(text)
    });
    Some(OpcuaUser {
        name: name?,
        password_env: password_env?,
    })
}

fn entities(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<Vec<OpcuaEntity>> {
    let seq = expect_list(
        entry,
        "a list of entities, e.g. `- { key: line-1, nodes: { speed_rpm: \"ns=2;s=Line1.Speed\" } }`",
        diags,
    )?;
    let list = elements(seq, &entry.path);
    if list.is_empty() {
        diags.push(entry.at(), &entry.path, "expected at least one entity");
        return None;
    }
    let mut out: Vec<OpcuaEntity> = Vec::new();
    // Node id → where it was first mapped, to refuse a second mapping.
    let mut seen: IndexMap<String, (String, String)> = IndexMap::new();
    let mut ok = true;
    for element in list {
        let Some(entity) = entity(&element, ctx, diags) else {
            ok = false;
            continue;
        };
        if out.iter().any(|o| o.key == entity.key) {
            diags.push(
                element.at(),
                &element.path,
                format!(
                    "entity key `{}` is used twice: list each entity once with all its nodes",
                    entity.key
                ),
            );
            ok = false;
            continue;
        }
        for (field, node) in &entity.nodes {
            if let Some((key, first)) = seen.get(node) {
                diags.push(
                    element.at(),
                    &element.path,
                    format!(
                        "node `{node}` is mapped twice (entity `{key}` field `{first}`, entity `{}` field `{field}`): one node feeds one field",
                        entity.key
                    ),
                );
                ok = false;
            } else {
                seen.insert(node.clone(), (entity.key.clone(), field.clone()));
            }
        }
        out.push(entity);
    }
    ok.then_some(out)
}

fn entity(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<OpcuaEntity> {
    let map = MapReader::open(
        entry,
        "an entity, e.g. `{ key: line-1, nodes: { speed_rpm: \"ns=2;s=Line1.Speed\" } }`",
        ENTITY_KEYS,
        diags,
    )?;
    let key = map
        .required("key", diags)
        .and_then(|e| reader::non_empty_string(&e, diags));
    let nodes = map.required("nodes", diags).and_then(|e| {
        let mapping = expect_mapping(
            &e,
            "a mapping of field name to node id, e.g. `{ speed_rpm: \"ns=2;s=Line1.Speed\" }`",
            diags,
        )?;
        let mut nodes = IndexMap::new();
        let mut ok = true;
        for (field, n) in entries(mapping, &e.path) {
            let target =
                ctx.fields
                    .resolve(field.as_str(), "node target", n.item.key_at, &n.path, diags);
            let node = reader::non_empty_string(&n, diags).and_then(|text| match node_id(&text) {
                Ok(()) => Some(text),
                Err(problem) => {
                    diags.push(n.at(), &n.path, problem);
                    None
                }
            });
            match (target, node) {
                (Some(_), Some(node)) => {
                    nodes.insert(field.as_str().to_string(), node);
                }
                _ => ok = false,
            }
        }
        if ok && nodes.is_empty() {
            diags.push(e.at(), &e.path, "expected at least one node");
            return None;
        }
        ok.then_some(nodes)
    });
    Some(OpcuaEntity {
        key: key?,
        nodes: nodes?,
    })
}

/// The standard string form of a node id (OPC UA Part 6, 5.3.1.10):
/// `[ns=<0..65535>;]<i|s|g|b>=<identifier>`. Checked here, without the
/// client crate, so a build without the `opcua` feature checks too.
pub(super) fn node_id(text: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!(
            "invalid node id `{}`: {why}; expected e.g. \"ns=2;s=Line1.Speed\" or \"ns=3;i=1001\"",
            reader::shorten(text)
        )
    };
    let rest = match text.strip_prefix("ns=") {
        Some(rest) => {
            let Some((ns, rest)) = rest.split_once(';') else {
                return Err(bad("`ns=` needs a `;` after the namespace index"));
            };
            if ns.parse::<u16>().is_err() {
                return Err(bad("the namespace index is not a number from 0 to 65535"));
            }
            rest
        }
        None => text,
    };
    let Some((kind, identifier)) = rest.split_once('=') else {
        return Err(bad(
            "no identifier type: write s=<name> for a string id, i=<number> for a numeric one",
        ));
    };
    if identifier.is_empty() {
        return Err(bad("the identifier is empty"));
    }
    match kind {
        "i" if identifier.parse::<u32>().is_err() => Err(bad(
            "a numeric identifier (i=) is a number from 0 to 4294967295",
        )),
        "g" if !is_guid(identifier) => Err(bad(
            "a GUID identifier (g=) looks like 09087e75-8e5e-499b-954f-f2a9603db28a",
        )),
        "i" | "s" | "g" | "b" => Ok(()),
        _ => Err(bad("the identifier type is one of i=, s=, g=, b=")),
    }
}

fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::{endpoint_url, node_id};

    #[test]
    fn node_ids_in_the_standard_string_form() {
        for good in [
            "ns=2;s=Line1.Speed",
            "ns=3;i=1001",
            "i=2258",
            "s=a=b",
            "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a",
            "ns=4;b=M/RbKBsRVkePCePcx24oRA==",
        ] {
            assert_eq!(node_id(good), Ok(()), "{good}");
        }
        for bad in [
            "Line1.Speed",
            "ns=2",
            "ns=x;i=1",
            "ns=70000;i=1",
            "ns=2;i=abc",
            "ns=2;x=1",
            "ns=2;s=",
            "g=123",
        ] {
            assert!(node_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_are_opc_tcp_urls() {
        for good in [
            "opc.tcp://10.0.0.9:4840/",
            "opc.tcp://plc.local:4840",
            "opc.tcp://plc.local/UA/Server",
            "opc.tcp://[::1]:4840/",
        ] {
            assert_eq!(endpoint_url(good), Ok(()), "{good}");
        }
        for bad in [
            "http://plc:4840/",
            "opc.tcp://:4840/",
            "opc.tcp://plc:0/",
            "opc.tcp://plc:x/",
            "opc.tcp://pl c:4840/",
        ] {
            assert!(endpoint_url(bad).is_err(), "{bad}");
        }
    }
}
