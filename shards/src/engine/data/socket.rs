//! One socket's I/O: connect, then read frames into the group until the socket ends; a
//! writer task drains the socket's queue in batches.

use std::time::Instant;

use futures_lite::future;
use futures_util::{SinkExt, StreamExt};
use polybook::{ConnId, SocketId};

use super::{step, step_ns, ShellRef, SocketIo};
use crate::net::{connect_ws_with, ConnectOptions, Message, Shutdown};

/// Opens the socket the group asked for and serves it until it ends or is closed.
pub(super) async fn socket_task(
    shell: ShellRef,
    conn: ConnId,
    socket: SocketId,
    url: String,
    opts: ConnectOptions,
    cancel: Shutdown,
) {
    let connected = future::or(async { Some(connect_ws_with(&url, &opts).await) }, async {
        cancel.wait().await;
        None
    })
    .await;
    let ws = match connected {
        // The group gave this open up (timeout, slot closed): it already forgot the socket.
        None => return,
        Some(Err(e)) => {
            tracing::debug!(conn = %conn, feed = %socket, error = %e, "connect failed");
            shell.borrow_mut().connecting.remove(&socket);
            step(&shell, |g, now, _, out| g.open_failed(socket, now, out));
            return;
        }
        Some(Ok(ws)) => ws,
    };
    if cancel.is_triggered() {
        return;
    }
    let (mut sink, mut stream) = ws.split();
    let (out_tx, out_rx) = flume::unbounded::<Message>();
    let kill = Shutdown::new();
    {
        let mut sh = shell.borrow_mut();
        sh.connecting.remove(&socket);
        sh.sockets.insert(socket, SocketIo { out: out_tx, kill: kill.clone() });
    }
    // The opening frames are queued before the writer starts: they go out first, in one write.
    step(&shell, |g, now, outputs, out| g.opened(socket, now, outputs, out));
    let writer = glommio::spawn_local(async move {
        while let Ok(msg) = out_rx.recv_async().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            // Drain what is queued before one flush: subscribe bursts go out in one write.
            while let Ok(more) = out_rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close(None).await;
    })
    .detach();
    let mut kill_wait = kill.wait();
    loop {
        let next = future::or(async { Some(stream.next().await) }, async {
            (&mut kill_wait).await;
            None
        })
        .await;
        let msg = match next {
            None | Some(None) => break,
            Some(Some(Err(e))) => {
                tracing::info!(conn = %conn, feed = %socket, error = %e, "socket error");
                break;
            }
            Some(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(text) => {
                frame(&shell, socket, text.as_str());
                // A socket that always has a frame ready would never give the executor back:
                // this lets the control queue (commands, timer, stats) in when it is due.
                glommio::yield_if_needed().await;
            }
            Message::Close(frame) => {
                tracing::info!(conn = %conn, feed = %socket, ?frame, "venue closed the connection");
                break;
            }
            _ => {}
        }
    }
    drop(writer);
    // Ended by the venue or the network (not by the group, which removes the socket first):
    // the group decides what follows.
    let ours = shell.borrow_mut().sockets.remove(&socket).is_some();
    kill.trigger();
    if ours {
        step(&shell, |g, now, outputs, out| g.closed(socket, now, outputs, out));
    }
}

/// One text frame into the group, timed from receipt to applied.
fn frame(shell: &ShellRef, socket: SocketId, text: &str) {
    let recv = Instant::now();
    let report =
        step_ns(shell, |g, recv_ns, outputs, out| g.frame(socket, text, recv_ns, outputs, out));
    let Some(report) = report else { return };
    if !report.errors.is_empty() {
        tracing::debug!(feed = %socket, errors = ?report.errors, "frame errors");
    }
    let ns = recv.elapsed().as_nanos() as u64;
    let sh = &mut *shell.borrow_mut();
    if let Some(h) = &mut sh.hist {
        h.saturating_record(ns.max(1));
        sh.hist_sum_ns = sh.hist_sum_ns.saturating_add(ns);
    }
}
