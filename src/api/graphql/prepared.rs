//! Prepared key lookups: queries that are nothing but lookups by key,
//! answered without the executor once the executor has answered their
//! shape.
//!
//! Why: a key lookup is the request dashboards and apps send most, and
//! async-graphql spends ~25 µs validating and walking it (the parse is
//! cached) around a ~1 µs read of the lookup cache
//! (`benches/graphql_micro.rs`: `lookup/executor` vs `lookup/store_get`),
//! which is what capped lookups under ingest (`benches/api_load.rs`). Servers in
//! this field cache query plans for the same reason (Hasura's plan cache,
//! graphql-jit).
//!
//! How it stays exact:
//! - A plan is keyed by the query's shape (`normalize.rs`: the text with
//!   its plain string and integer literals taken out) and made only after
//!   the executor answered a query of that shape **without any error**: the
//!   document parsed, passed validation and every limit against this
//!   schema generation. For the documents a plan covers, none of that can
//!   change with the literal or variable values the plan accepts (a string
//!   for a `String!` key, a 64-bit integer for a `Long!` key), so the plan
//!   holds for every query of that shape.
//! - Only documents made of root lookups (`<product>(<key>: …)`) selecting
//!   the product's own fields and `__typename` are planned: no fragments,
//!   directives, variable defaults, repeated response keys, `_meta`,
//!   `history` or `audit`. Anything else is left to the executor.
//! - A plan answers only the outcome it can give exactly as the executor
//!   would: every lookup allowed and read without error. A refused right,
//!   a store error, a variable missing or of another type, an unknown
//!   operation name: the request goes to the executor, which gives the
//!   error (and counts the denial) as it always did. Side effects (usage
//!   counters, metrics) happen only once a plan has answered.
//! - The read itself, the row filter, the masks and the field values are
//!   the resolvers' own functions (`connection::lookup_visible`,
//!   `instance::field_output`), and the response is an
//!   `async_graphql::Response` serialized as the executor's is.
//!   `tests/it/graphql_prepared.rs` compares the two answers byte for byte for
//!   every role of the example products.
//! - Plans belong to one schema generation (`reload.rs`): a reload starts
//!   with none.
//!
//! Bounded like the parse cache: at most [`MAX_PLANS`] shapes of texts up
//! to [`MAX_PLANNED_QUERY_BYTES`], forgotten all at once when full.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationType, Selection,
};
use async_graphql::{Name, Response, Value as Gql, Variables};
use indexmap::IndexMap;

use super::connection::lookup_visible;
use super::instance::field_output;
use super::normalize::{normalize, Literal, LiteralKind, Normalized};
use super::product_api::ProductApi;
use super::runtime::Runtime;
use crate::policy::access::Caller;
use crate::product::FieldType;

/// Shapes kept at most per schema generation.
pub(crate) const MAX_PLANS: usize = 256;
/// Longer texts always go to the executor.
pub(crate) const MAX_PLANNED_QUERY_BYTES: usize = 4 * 1024;

/// Where a lookup's key comes from.
#[derive(Debug)]
enum KeySource {
    /// The n-th literal of the text.
    Literal(usize),
    /// A variable declared `<KeyType>!` without a default.
    Variable(Name),
}

/// One selected field of the instance.
#[derive(Debug)]
enum Selected {
    Field {
        name: String,
        ty: FieldType,
        /// The key field is non-null in the schema.
        is_key: bool,
    },
    Typename,
}

/// One root lookup of a plan.
struct PlannedLookup {
    response_key: Name,
    api: Arc<ProductApi>,
    key: KeySource,
    selection: Vec<(Name, Selected)>,
}

/// A document of key lookups, ready to answer.
pub(crate) struct Plan {
    /// The name of the document's only operation.
    operation: Option<String>,
    lookups: Vec<PlannedLookup>,
}

enum Entry {
    Planned(Arc<Plan>),
    /// The executor answered this shape, and it is not a plain lookup.
    Unsuitable,
}

/// What a schema generation knows of query shapes.
pub(crate) struct PreparedLookups {
    /// Lookup root field name → its product.
    lookups: HashMap<String, Arc<ProductApi>>,
    /// Read on every request by every runtime worker, written once per
    /// new shape: a read lock, so a worker preempted while it reads
    /// blocks no other worker. With a mutex, perf's off-CPU stacks under
    /// ingest showed runtime workers parked here while the holder was off
    /// the CPU (the budget's p99 did not measurably move either way:
    /// benches/README.md, "Where the p99 goes").
    plans: RwLock<HashMap<String, Entry>>,
}

/// What to do with a request, decided before any work.
pub(crate) enum Attempt<'a> {
    /// A plan exists for the request's shape.
    Planned(Arc<Plan>, Normalized<'a>),
    /// The shape was never answered: execute, then learn it.
    Learn,
    /// Not plannable: execute.
    Execute,
}

impl PreparedLookups {
    pub(crate) fn new(apis: &[Arc<ProductApi>]) -> PreparedLookups {
        PreparedLookups {
            lookups: apis
                .iter()
                .map(|api| (api.names.lookup.clone(), api.clone()))
                .collect(),
            plans: RwLock::new(HashMap::new()),
        }
    }

    // A panic mid-insert leaves a valid map of whole entries.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.plans.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.plans.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds the plan for `query`'s shape, if any.
    pub(crate) fn attempt<'a>(&self, query: &'a str) -> Attempt<'a> {
        if query.len() > MAX_PLANNED_QUERY_BYTES {
            return Attempt::Execute;
        }
        let Some(normalized) = normalize(query) else {
            return Attempt::Execute;
        };
        match self.read().get(&normalized.shape) {
            Some(Entry::Planned(plan)) => Attempt::Planned(plan.clone(), normalized),
            Some(Entry::Unsuitable) => Attempt::Execute,
            None => Attempt::Learn,
        }
    }

    /// Learns the shape of `query`, which the executor just answered
    /// without an error.
    pub(crate) fn learn(&self, query: &str, normalized: &Normalized<'_>) {
        let entry = match async_graphql::parser::parse_query(query) {
            Ok(document) => match self.plan(&document, &normalized.literals) {
                Some(plan) => Entry::Planned(Arc::new(plan)),
                None => Entry::Unsuitable,
            },
            Err(_) => Entry::Unsuitable,
        };
        let mut plans = self.write();
        if plans.len() >= MAX_PLANS && !plans.contains_key(&normalized.shape) {
            plans.clear();
        }
        plans.insert(normalized.shape.clone(), entry);
    }

    /// The plan of a document, if it is made of key lookups only.
    fn plan(&self, document: &ExecutableDocument, literals: &[Literal<'_>]) -> Option<Plan> {
        if !document.fragments.is_empty() {
            return None;
        }
        let (operation, definition) = match &document.operations {
            DocumentOperations::Single(definition) => (None, &definition.node),
            DocumentOperations::Multiple(map) if map.len() == 1 => {
                let (name, definition) = map.iter().next()?;
                (Some(name.to_string()), &definition.node)
            }
            DocumentOperations::Multiple(_) => return None,
        };
        if definition.ty != OperationType::Query || !definition.directives.is_empty() {
            return None;
        }
        // Variables: `$name: <Type>!`, no default, no directive.
        let mut variables: HashMap<&str, &str> = HashMap::new();
        for variable in &definition.variable_definitions {
            let variable = &variable.node;
            let ty = &variable.var_type.node;
            let BaseType::Named(type_name) = &ty.base else {
                return None;
            };
            if ty.nullable || variable.default_value.is_some() || !variable.directives.is_empty() {
                return None;
            }
            variables.insert(variable.name.node.as_str(), type_name.as_str());
        }
        let mut lookups = Vec::new();
        let mut literal_keys = 0usize;
        let mut root_keys = HashSet::new();
        for selection in &definition.selection_set.node.items {
            let Selection::Field(field) = &selection.node else {
                return None;
            };
            let field = &field.node;
            let api = self.lookups.get(field.name.node.as_str())?;
            let response_key = field.alias.as_ref().unwrap_or(&field.name).node.clone();
            if !field.directives.is_empty() || !root_keys.insert(response_key.clone()) {
                return None;
            }
            let [(argument, value)] = field.arguments.as_slice() else {
                return None;
            };
            if argument.node.as_str() != api.product.key {
                return None;
            }
            let key_type = api.product.key_field().ty;
            // The argument as a constant, or the variable it names (the
            // parser's value type is not re-exported by async-graphql).
            let key = match value.node.clone().into_const_with(Err::<Gql, Name>) {
                Err(name) => {
                    if variables.get(name.as_str()) != Some(&super::values::type_name(key_type)) {
                        return None;
                    }
                    KeySource::Variable(name.clone())
                }
                Ok(Gql::String(_) | Gql::Number(_)) => {
                    let literal = literals.get(literal_keys)?;
                    let expected = match key_type {
                        FieldType::String => LiteralKind::String,
                        FieldType::Int => LiteralKind::Int,
                        _ => return None,
                    };
                    if literal.kind != expected {
                        return None;
                    }
                    literal_keys += 1;
                    KeySource::Literal(literal_keys - 1)
                }
                _ => return None,
            };
            let mut selection = Vec::new();
            let mut keys = HashSet::new();
            for item in &field.selection_set.node.items {
                let Selection::Field(sub) = &item.node else {
                    return None;
                };
                let sub = &sub.node;
                let key = sub.alias.as_ref().unwrap_or(&sub.name).node.clone();
                if !sub.directives.is_empty()
                    || !sub.arguments.is_empty()
                    || !sub.selection_set.node.items.is_empty()
                    || !keys.insert(key.clone())
                {
                    return None;
                }
                let name = sub.name.node.as_str();
                let selected = if name == "__typename" {
                    Selected::Typename
                } else {
                    let product_field = api.product.fields.get(name)?;
                    Selected::Field {
                        name: name.to_string(),
                        ty: product_field.ty,
                        is_key: name == api.product.key,
                    }
                };
                selection.push((key, selected));
            }
            if selection.is_empty() {
                return None;
            }
            lookups.push(PlannedLookup {
                response_key,
                api: api.clone(),
                key,
                selection,
            });
        }
        // Every literal of the text is a lookup's key: nothing else in the
        // document may vary with the shape.
        if lookups.is_empty() || literal_keys != literals.len() {
            return None;
        }
        Some(Plan { operation, lookups })
    }
}

impl Plan {
    /// The entity key of one lookup, or `None` when the executor must
    /// judge the value.
    fn entity(
        &self,
        lookup: &PlannedLookup,
        literals: &[Literal<'_>],
        variables: &Variables,
    ) -> Option<String> {
        let key_type = lookup.api.product.key_field().ty;
        match &lookup.key {
            KeySource::Literal(n) => {
                let literal = literals.get(*n)?;
                match key_type {
                    FieldType::Int => literal.text.parse::<i64>().ok().map(|i| i.to_string()),
                    _ => Some(literal.text.to_string()),
                }
            }
            KeySource::Variable(name) => match (key_type, variables.get(name)?) {
                (FieldType::String, Gql::String(s)) => Some(s.clone()),
                (FieldType::Int, value) => super::values::long(value).map(|i| i.to_string()),
                _ => None,
            },
        }
    }

    /// Answers `request` as the executor would, or `None` when only the
    /// executor can (see the module doc).
    pub(crate) async fn answer(
        &self,
        operation_name: Option<&str>,
        variables: &Variables,
        literals: &[Literal<'_>],
        runtime: &Runtime,
        caller: &Caller,
    ) -> Option<Response> {
        if operation_name.is_some() && operation_name != self.operation.as_deref() {
            return None;
        }
        let mut data = IndexMap::with_capacity(self.lookups.len());
        for lookup in &self.lookups {
            let entity = self.entity(lookup, literals, variables)?;
            let view = caller.view(&lookup.api.product);
            if !view.read {
                return None;
            }
            let instance = lookup_visible(runtime, &lookup.api, &view, entity)
                .await
                .ok()?;
            let value = match instance {
                None => Gql::Null,
                Some(instance) => {
                    let mut object = IndexMap::with_capacity(lookup.selection.len());
                    for (key, selected) in &lookup.selection {
                        let value = match selected {
                            Selected::Typename => Gql::String(lookup.api.names.object.clone()),
                            Selected::Field { name, ty, is_key } => {
                                let value = field_output(
                                    instance.as_ref(),
                                    name,
                                    *ty,
                                    *is_key,
                                    lookup.api.enums.get(name).map(|e| e.as_ref()),
                                );
                                if *is_key && value == Gql::Null {
                                    // A non-null field without a value: the
                                    // executor's error, not ours to make.
                                    return None;
                                }
                                value
                            }
                        };
                        object.insert(key.clone(), value);
                    }
                    Gql::Object(object)
                }
            };
            data.insert(lookup.response_key.clone(), value);
        }
        for lookup in &self.lookups {
            runtime.usage.query(lookup.api.name());
        }
        Some(Response::new(Gql::Object(data)))
    }
}
