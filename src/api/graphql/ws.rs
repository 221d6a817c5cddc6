//! The subscription WebSocket: which subprotocol is spoken, and the
//! socket loop around async-graphql's protocol state machine.
//!
//! Why not async-graphql-axum's `GraphQLProtocol` + `GraphQLWebSocket`:
//! the extractor picks the first protocol *the client* lists while axum's
//! `protocols()` answers with the first *the server* lists, so a client
//! offering `graphql-ws, graphql-transport-ws` was told
//! `graphql-transport-ws` and then spoken to in the legacy protocol.
//! Here one function chooses (graphql-transport-ws whenever offered, the
//! current protocol; else the legacy graphql-ws) and the handshake
//! answers with exactly that one.
//!
//! A refused `connection_init` (bad or revoked token) ends the connection
//! as each protocol says: close code 4403 `Forbidden` on
//! graphql-transport-ws; `connection_error` and then a close frame on the
//! legacy protocol (async-graphql closes with 1002 on the former and sends
//! no close frame on the latter). Every connection ends with a close
//! frame.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_graphql::http::{WebSocket as Protocol, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::{header, HeaderMap};
use futures_util::{SinkExt, StreamExt};

/// Close code for a refused `connection_init` (graphql-transport-ws).
pub(crate) const FORBIDDEN: u16 = 4403;

/// The subprotocol to speak, from every `Sec-WebSocket-Protocol` value
/// the client offered: graphql-transport-ws when offered, else graphql-ws,
/// else `None`.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<WebSocketProtocols> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    [
        WebSocketProtocols::GraphQLWS,
        WebSocketProtocols::SubscriptionsTransportWS,
    ]
    .into_iter()
    .find(|protocol| {
        offered
            .iter()
            .any(|p| p == protocol.sec_websocket_protocol())
    })
}

/// Serves one connection in `protocol` until the client leaves or the
/// protocol ends it. `on_init` turns the `connection_init` payload into
/// the connection's data, or refuses it.
pub(crate) async fn serve<F, R>(
    socket: WebSocket,
    schema: async_graphql::dynamic::Schema,
    protocol: WebSocketProtocols,
    on_init: F,
) where
    F: FnOnce(serde_json::Value) -> R + Send + 'static,
    R: Future<Output = async_graphql::Result<async_graphql::Data>> + Send + 'static,
{
    let refused = Arc::new(AtomicBool::new(false));
    let seen = refused.clone();
    let on_init = move |payload| {
        let init = on_init(payload);
        async move {
            let data = init.await;
            if data.is_err() {
                seen.store(true, Ordering::Relaxed);
            }
            data
        }
    };
    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|message| futures_util::future::ready(message.is_ok()))
        .filter_map(|message| {
            futures_util::future::ready(match message {
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => Some(message.into_data()),
                _ => None,
            })
        });
    let output = Protocol::new(schema, input, protocol).on_connection_init(on_init);
    futures_util::pin_mut!(output);
    while let Some(message) = output.next().await {
        let message = match message {
            WsMessage::Text(text) => Message::Text(text.into()),
            WsMessage::Close(code, reason) => {
                let frame = if refused.load(Ordering::Relaxed) {
                    forbidden()
                } else {
                    CloseFrame {
                        code,
                        reason: truncated(&reason).into(),
                    }
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
        };
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let frame = if refused.load(Ordering::Relaxed) {
        forbidden()
    } else {
        CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        }
    };
    // The client may be gone already: nothing to tell it then.
    let _ = sink.send(Message::Close(Some(frame))).await;
}

fn forbidden() -> CloseFrame {
    CloseFrame {
        code: FORBIDDEN,
        reason: "Forbidden".into(),
    }
}

/// A close reason fits in 123 bytes (RFC 6455 §5.5).
fn truncated(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn offered(values: &[&'static str]) -> Option<&'static str> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(value),
            );
        }
        negotiate(&headers).map(|p| p.sec_websocket_protocol())
    }

    #[test]
    fn the_current_protocol_wins_in_any_order() {
        assert_eq!(
            offered(&["graphql-ws, graphql-transport-ws"]),
            Some("graphql-transport-ws")
        );
        assert_eq!(
            offered(&["graphql-transport-ws, graphql-ws"]),
            Some("graphql-transport-ws")
        );
        assert_eq!(
            offered(&["graphql-ws", "graphql-transport-ws"]),
            Some("graphql-transport-ws")
        );
        assert_eq!(offered(&["graphql-ws"]), Some("graphql-ws"));
        assert_eq!(offered(&["mqtt"]), None);
        assert_eq!(offered(&[]), None);
    }

    #[test]
    fn close_reasons_are_cut_on_a_character() {
        let long = "é".repeat(100);
        let cut = truncated(&long);
        assert!(cut.len() <= 123 && long.starts_with(cut));
    }
}
