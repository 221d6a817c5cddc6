//! The built-in web console (issue 28): what the node is doing, at a
//! glance, in any current browser, with no network beyond the node.
//!
//! Everything it needs is compiled into the binary (`assets/`, embedded
//! with `include_bytes!`): no CDN, no outside font, nothing fetched but
//! from the node itself. The assets are hand-written ES modules, one CSS
//! file and SVG drawn by the script — no framework and no build step, so
//! `cargo build` alone builds the console on a fresh machine, the files in
//! the repository are the files served, and the whole console stays a few
//! tens of kilobytes (see `assets::total_sizes`).
//!
//! The shell (`/` and `/console/*`) is served without credentials: it is
//! the same for every caller and holds no data, and a browser's first
//! navigation cannot carry a bearer token. Every figure and value the
//! console shows comes from the node's own GraphQL (`/graphql`,
//! `/graphql/ws`), `/metrics`, and the node's `/status/v1`
//! (`super::status`, the same document `meshlet status` reads), all behind the same authentication and policy as for any other client,
//! so each role sees only what its rules allow. When the anonymous role
//! cannot read, the console asks for a token and keeps it in the tab's
//! `sessionStorage` only.
//!
//! This module owns only the console's routes; the router is assembled in
//! `super::router`.

mod assets;

use axum::Router;

use super::ApiState;

/// The console's shell: `/` and its assets, open (see the module doc).
pub(super) fn open_routes() -> Router<ApiState> {
    assets::routes()
}
