#!/usr/bin/env bash
# Rebuilds the GraphiQL assets the binary embeds (graphiql.rs) from the
# pinned npm packages: the UMD bundles of graphiql, react, react-dom and
# graphql-ws (GraphiQL's UMD bundle has no WebSocket client of its own),
# minified with esbuild (graphiql's own "min" bundle is not minified) and
# compressed with zstd -19 (license comments kept). Run it after changing a version below, then
# update the names in graphiql.rs; the .zst files are committed.
# Needs: npm, tar, zstd.
set -euo pipefail
GRAPHIQL=3.8.3
REACT=18.3.1
GRAPHQL_WS=6.4.2
ESBUILD=0.25.10
out="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "graphiql@$GRAPHIQL" "react@$REACT" "react-dom@$REACT" "graphql-ws@$GRAPHQL_WS" \
  "esbuild@$ESBUILD" "@esbuild/linux-x64@$ESBUILD" >/dev/null
for f in *.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
esbuild="$work/esbuild-linux-x64-$ESBUILD/package/bin/esbuild"
"$esbuild" "graphiql-$GRAPHIQL/package/graphiql.min.js" --minify --legal-comments=eof \
  --log-level=error --outfile="graphiql-$GRAPHIQL.js"
cp "graphiql-$GRAPHIQL/package/graphiql.min.css" in.css
"$esbuild" in.css --minify --log-level=error --outfile="graphiql-$GRAPHIQL.css"
cp "react-$REACT/package/umd/react.production.min.js" "react-$REACT.js"
cp "react-dom-$REACT/package/umd/react-dom.production.min.js" "react-dom-$REACT.js"
cp "graphql-ws-$GRAPHQL_WS/package/umd/graphql-ws.min.js" "graphql-ws-$GRAPHQL_WS.js"
rm -f "$out"/*.zst
for f in "graphiql-$GRAPHIQL.js" "graphiql-$GRAPHIQL.css" "react-$REACT.js" "react-dom-$REACT.js" \
  "graphql-ws-$GRAPHQL_WS.js"; do
  zstd -q -19 "$f" -o "$out/$f.zst"
done
ls -l "$out"/*.zst
