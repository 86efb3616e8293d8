//! One market-channel WebSocket: a reader that handles client frames (subscriptions, `PING`)
//! and enforces the idle close, and a writer that drains the connection's queue in batches
//! (`feed` each frame, one flush per batch) and carries out closes and drops.
//!
//! Both halves run in the connection's one task, raced: whichever ends first ends the
//! connection, and dropping both halves drops the TCP stream without a close frame.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Utf8Bytes;
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_lite::future::{or, poll_fn};
use futures_util::{SinkExt, StreamExt};

use super::state::{ConnId, End, Kill, State, Work, BATCH_MAX};
use crate::net::{Message, ServerStream, ServerWs, Shutdown};

/// The venue's reason text for slow consumers (protocol doc §4).
pub const SLOW_CONSUMER_REASON: &str = "slow consumer: send buffer full";

/// How long a close frame may take to leave, and how long we then wait for the client's
/// reply before dropping the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Serves one accepted `/ws/market` socket until it ends.
pub(crate) async fn serve_conn(
    state: Rc<RefCell<State>>,
    ws: ServerWs,
    idle: Duration,
    shutdown: Shutdown,
) {
    let id = state.borrow_mut().open_conn();
    let (mut tx, mut rx) = ws.split();
    let end =
        or(or(read_loop(&state, id, &mut rx, idle), write_loop(&state, id, &mut tx)), async {
            shutdown.wait().await;
            End::Shutdown
        })
        .await;
    if matches!(end, End::Killed(Kill::Close1013 | Kill::SlowConsumer)) {
        // Keep reading for a moment: closing a socket with unread input makes the kernel send
        // RST, which can destroy our close frame before the client reads it.
        let drain = async {
            while let Some(Ok(m)) = rx.next().await {
                if m.is_close() {
                    break;
                }
            }
        };
        let _ = timeout(CLOSE_LINGER, drain).await;
    }
    state.borrow_mut().close_conn(id, end);
}

async fn read_loop(
    state: &RefCell<State>,
    id: ConnId,
    rx: &mut WebSocketReceiver<ServerStream>,
    idle: Duration,
) -> End {
    loop {
        // Any client traffic (text, binary, protocol ping) restarts the idle clock.
        let Some(next) = timeout(idle, rx.next()).await else { return End::Idle };
        match next {
            None => return End::Client,
            Some(Err(_)) => return End::Error,
            Some(Ok(Message::Text(t))) => state.borrow_mut().client_text(id, t.as_str()),
            Some(Ok(Message::Binary(_))) => state.borrow_mut().ignore(id),
            Some(Ok(Message::Close(_))) => return End::Client,
            // tungstenite answers protocol pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
        }
    }
}

async fn write_loop(
    state: &RefCell<State>,
    id: ConnId,
    tx: &mut WebSocketSender<ServerStream>,
) -> End {
    let mut batch: Vec<Utf8Bytes> = Vec::with_capacity(BATCH_MAX);
    loop {
        let work = poll_fn(|cx| state.borrow_mut().poll_work(id, &mut batch, cx)).await;
        match work {
            Work::Kill(Kill::Drop) => return End::Killed(Kill::Drop),
            Work::Kill(kill) => {
                let frame =
                    CloseFrame { code: CloseCode::Again, reason: SLOW_CONSUMER_REASON.into() };
                let _ = timeout(CLOSE_LINGER, tx.send(Message::Close(Some(frame)))).await;
                return End::Killed(kill);
            }
            Work::Batch => {
                let n = batch.len();
                let write = async {
                    for text in batch.drain(..) {
                        tx.feed(Message::Text(text)).await?;
                    }
                    tx.flush().await
                };
                // A kill must not wait for a client that has stopped reading.
                let killed = poll_fn(|cx| state.borrow_mut().poll_kill(id, cx));
                match or(async { Some(write.await) }, async {
                    killed.await;
                    None
                })
                .await
                {
                    Some(Ok(())) => state.borrow_mut().flushed(id, n),
                    Some(Err(_)) => return End::Error,
                    None => {}
                }
            }
        }
    }
}

/// `Some(output)`, or None if `dur` passed first.
pub(crate) async fn timeout<T>(dur: Duration, fut: impl Future<Output = T>) -> Option<T> {
    or(async { Some(fut.await) }, async {
        glommio::timer::sleep(dur).await;
        None
    })
    .await
}
